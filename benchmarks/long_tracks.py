"""Memory and speed against track length, per job, printed as one JSON object.

    python benchmarks/long_tracks.py [--durations-s 240,3600] [--runner-args ...]
    python benchmarks/long_tracks.py --durations-s 240,3600,36000   # the 10-hour case (~1 h of CPU)

For each duration, one track of pink noise as a 128 kb/s stereo mp3 (written a few
seconds at a time, so the benchmark itself stays small; past 10 minutes the first 10
minutes' mp3 frames repeat), then `features`,
`embed --features` (on those shards) and `embed --audio`, each a fresh `musicrep`
process on the default runner with a tiny model. Reported per job and duration: peak RSS
of the biggest process (the largest VmHWM among the job's processes, sampled every
0.25 s), CPU seconds of the job's processes (their utime + stime as last sampled; start-up
included) and audio seconds per CPU second. Target (issue 17): the longest track's peak RSS within 300 MB of
the 4-minute track's, in every job.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import av
import numpy as np
import scipy.signal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from embed import ChildPeakRss  # noqa: E402  (the benchmarks' one sampler of worker peaks)

RATE_HZ = 44100
# Paul Kellet's economy pink-noise filter (-3 dB/octave within ±0.05 dB above 40 Hz at 44.1 kHz).
_PINK_B = [0.049922035, -0.095993537, 0.050612699, -0.004408786]
_PINK_A = [1.0, -2.494956002, 2.017265875, -0.522189400]
LOOP_S = 600.0  # longer tracks repeat their first 10 minutes (see write_pink_mp3)


def write_pink_mp3(path: str, duration_s: float, *, seed: int = 0, block_s: float = 10.0, loop_s: float = LOOP_S) -> None:
    """Stereo pink noise, 128 kb/s mp3, encoded `block_s` at a time (the filter's state
    carries over, so the blocks join without a seam). A track longer than `loop_s` repeats
    its first `loop_s` of encoded packets: encoding 10 h with LAME would cost ~30 min of
    CPU, more than the jobs measured. The bit reservoir is off, so every mp3 frame decodes
    on its own and a repeat joins its predecessor as any two frames do."""
    rng = np.random.default_rng(seed)
    state = np.zeros((2, len(_PINK_A) - 1))
    total = int(duration_s * RATE_HZ)
    encoded = min(total, int(loop_s * RATE_HZ))
    with av.open(path, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=RATE_HZ, layout="stereo", options={"reservoir": "0"})
        stream.bit_rate = 128_000
        packets = []
        done = 0
        while done < encoded:
            n = min(int(block_s * RATE_HZ), encoded - done)
            white = rng.standard_normal((2, n))
            pink, state = scipy.signal.lfilter(_PINK_B, _PINK_A, white, axis=1, zi=state)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(0.15 * pink, np.float32), format="fltp", layout="stereo")
            frame.rate = RATE_HZ
            frame.pts = done
            packets += _mux(container, stream.encode(frame))
            done += n
        packets += _mux(container, stream.encode(None))
        span = packets[-1][1] + packets[-1][2] - packets[0][1]
        repeat = 0
        while done < total:  # the loop: the same packets, later timestamps
            repeat += 1
            for data, pts, duration, time_base in packets:
                if done >= total:
                    break
                packet = av.Packet(data)
                packet.time_base, packet.duration, packet.stream = time_base, duration, stream
                packet.pts = packet.dts = pts + repeat * span
                container.mux(packet)
                done += duration


def _mux(container, packets) -> list[tuple[bytes, int, int, object]]:
    """Muxes the encoder's packets; returns them as (data, pts, duration, time base)."""
    kept = []
    for packet in packets:
        kept.append((bytes(packet), packet.pts, packet.duration, packet.time_base))
        container.mux(packet)
    return kept


def run_job(argv: list[str]) -> dict:
    """One `musicrep` command in a fresh process: peak RSS of its biggest process, CPU s."""
    started = time.perf_counter()
    with ChildPeakRss(interval_s=0.25) as usage:
        subprocess.run([sys.executable, "-m", "musicrep.cli", *argv], check=True, stdout=subprocess.DEVNULL)
    return {"peak_rss_mb": round(usage.peak_bytes / 2**20), "cpu_s": round(usage.cpu_s, 1), "wall_s": round(time.perf_counter() - started, 1)}


def tiny_model(path: str) -> None:
    import keras

    import musicrep.model

    keras.utils.set_random_seed(0)
    config = musicrep.model.SF_NFNET_VARIANTS["tiny"]
    musicrep.model.save(musicrep.model.build_sf_nfnet(config), path, config=config, source="benchmark")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--durations-s", default="240,3600", help="comma-separated track durations (s)")
    parser.add_argument("--jobs", default="features,embed_features,embed_audio")
    args, beam_args = parser.parse_known_args()
    durations = [float(d) for d in args.durations_s.split(",")]
    jobs = args.jobs.split(",")
    results: dict[str, dict] = {job: {} for job in jobs}
    with tempfile.TemporaryDirectory(prefix="musicrep-long-") as tmp:
        model = os.path.join(tmp, "model")
        tiny_model(model)
        for duration_s in durations:
            catalog = os.path.join(tmp, f"catalog-{duration_s:g}")
            os.makedirs(catalog)
            write_pink_mp3(os.path.join(catalog, "pink.mp3"), duration_s)
            shards = os.path.join(tmp, f"features-{duration_s:g}")
            commands = {
                "features": ["features", "--input", f"{catalog}/*.mp3", "--output", shards],
                "embed_features": ["embed", "--features", shards, "--model", model, "--output", os.path.join(tmp, f"ef-{duration_s:g}")],
                "embed_audio": ["embed", "--audio", f"{catalog}/*.mp3", "--model", model, "--output", os.path.join(tmp, f"ea-{duration_s:g}")],
            }
            if "embed_features" in jobs and "features" not in jobs:
                jobs = ["features", *jobs]  # embed --features reads its shards
            for job in jobs:
                measured = run_job(commands[job] + beam_args)
                measured["audio_s_per_cpu_s"] = round(duration_s / max(measured["cpu_s"], 1e-9), 1)
                results.setdefault(job, {})[f"{duration_s:g}"] = measured
                print(f"{job} {duration_s:g} s: {measured}", file=sys.stderr)
    shortest, longest = f"{min(durations):g}", f"{max(durations):g}"
    growth = {job: by[longest]["peak_rss_mb"] - by[shortest]["peak_rss_mb"] for job, by in results.items() if by}
    print(json.dumps({
        "track": f"pink noise, 128 kb/s stereo mp3, 44.1 kHz (its first {LOOP_S:g} s repeated)",
        "durations_s": durations,
        "jobs": results,
        "peak_rss_growth_mb": growth,
        "target_growth_mb": 300,
        "meets_target": all(g <= 300 for g in growth.values()),
    }, indent=2))


if __name__ == "__main__":
    main()
