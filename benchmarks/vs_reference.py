"""`mule analyze` (the reference CLI) against `musicrep embed --audio`, as one JSON object.

    python benchmarks/vs_reference.py [--tracks 16] [--duration-s 60] [--engine tf] [--precision fp32]

Both sides embed the same synthetic mp3 tracks (stereo 44.1 kHz, `musicrep.testing`)
with the same random reference weights: the oracle (sxmp-mule 1.1.2 in its throwaway venv,
tests/oracle_env.py) builds and perturbs its SF-NFNet-F0 (tests/mule_reference.py), and
`musicrep model import-mule` imports that file. The reference runs its own console script
once per file, as its CLI takes one file (`mule analyze --config timeline.yml -i F -o O`,
3 s windows at 0.5 Hz then the average: the release's timeline settings); ours runs one
embed job over all of them. Each side runs as child processes of this one and is charged
their CPU time (user + system, `getrusage(RUSAGE_CHILDREN)` around it), start-up and model
loading included. Reported: audio seconds per CPU second of each side, their ratio
(target ≥ 8), wall seconds, and the minimum cosine between the two embeddings of a track.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from musicrep.testing import encode_audio, plan_catalog, render_track

# The oracle helpers live with the tests, which build the reference weights the same way.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mule_reference import TIMELINE_CONFIG, reference_model  # noqa: E402
from oracle_env import mule_python  # noqa: E402

SAMPLE_RATE_HZ = 44100


def write_tracks(directory: Path, n_tracks: int, duration_s: float) -> float:
    """Writes track_NNNN.mp3 files; returns their total duration in seconds."""
    directory.mkdir(parents=True)
    for spec in plan_catalog(n_tracks=n_tracks, seed=11):
        spec = dataclasses.replace(spec, sample_rate_hz=SAMPLE_RATE_HZ, channels=2)
        audio = render_track(spec, duration_s=duration_s)
        (directory / f"{spec.track_id}.mp3").write_bytes(
            encode_audio(audio, sample_rate_hz=SAMPLE_RATE_HZ, audio_format="mp3")
        )
    return n_tracks * duration_s


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(commands: list[list[str]], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds of the children, wall seconds) of running `commands` one after another."""
    cpu, wall = child_cpu_s(), time.perf_counter()
    for command in commands:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed:\n{result.stderr[-3000:]}")
    return child_cpu_s() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--engine", default="tf")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    oracle_env = {k: v for k, v in env.items() if not k.startswith("PYTHON")}
    reference = reference_model(seed=7)
    mule = str(mule_python().parent / "mule")
    musicrep = [sys.executable, "-m", "musicrep.cli"]
    with tempfile.TemporaryDirectory(prefix="musicrep-vs-reference-") as tmp:
        work = Path(tmp)
        audio_s = write_tracks(work / "audio", args.tracks, args.duration_s)
        export = str(work / "export")
        subprocess.run([*musicrep, "model", "import-mule", str(reference.keras_file), "--output", export],
                       env=env, check=True, capture_output=True)
        config = work / "timeline.yml"
        config.write_text(TIMELINE_CONFIG.format(model=reference.h5_file))
        tracks = sorted((work / "audio").glob("*.mp3"))
        (work / "mule").mkdir()
        mule_cpu_s, mule_wall_s = timed(
            [[mule, "analyze", "--config", str(config), "-i", str(path), "-o", str(work / "mule" / f"{path.stem}.npy")]
             for path in tracks],
            oracle_env,
        )
        ours_cpu_s, ours_wall_s = timed(
            [[*musicrep, "embed", "--audio", f"{work}/audio/*.mp3", "--model", export, "--output", str(work / "ours"),
              "--engine", args.engine, "--precision", args.precision]],
            env,
        )
        rows = {}
        for path in glob.glob(f"{work}/ours/embeddings-*.parquet"):
            for row in pq.read_table(path).to_pylist():
                rows[row["track_id"]] = np.asarray(row["embedding"], np.float64)
        cosines = []
        for path in tracks:
            theirs = np.load(work / "mule" / f"{path.stem}.npy")[:, 0].astype(np.float64)
            ours = rows[path.stem]
            cosines.append(ours @ theirs / (np.linalg.norm(ours) * np.linalg.norm(theirs)))
    mule_rate, ours_rate = audio_s / mule_cpu_s, audio_s / ours_cpu_s
    print(json.dumps({
        "benchmark": "vs_reference",
        "tracks": args.tracks,
        "audio_s": audio_s,
        "engine": args.engine,
        "precision": args.precision,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "mule_cpu_s": round(mule_cpu_s, 1),
        "mule_wall_s": round(mule_wall_s, 1),
        "mule_audio_s_per_cpu_s": round(mule_rate, 3),
        "musicrep_cpu_s": round(ours_cpu_s, 1),
        "musicrep_wall_s": round(ours_wall_s, 1),
        "musicrep_audio_s_per_cpu_s": round(ours_rate, 3),
        "ratio": round(ours_rate / mule_rate, 2),
        "target_ratio": 8.0,
        "tracks_compared": len(cosines),
        "min_track_cosine": float(min(cosines)),
    }, indent=2))


if __name__ == "__main__":
    main()
