"""Every job on every runner path proven here: did it run, are its outputs equal to the
default runner's, how long did it take (wall seconds, launcher included). Prints JSON.

    python benchmarks/runners.py [--tracks 4] [--seconds 6]

Runners: the default (FnApiRunner), Prism in LOOPBACK, EXTERNAL (a worker pool this script
starts) and PROCESS (a boot script) environments, and DirectRunner. Jobs: features,
embed from the shards, embed --audio. Equal: same track ids and dead letters, log-mel
bytes identical per track, embeddings within 1e-6.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from audio_files import tone, write_audio  # noqa: E402
from prism_support import free_port, prism_args, start_worker_pool, write_process_boot  # noqa: E402

import keras  # noqa: E402

import musicrep.model  # noqa: E402
from musicrep.contracts.shard_dataset import read_shards  # noqa: E402
from musicrep.manifest import committed_files, read_manifest  # noqa: E402
from musicrep.pipelines import embed as embed_job  # noqa: E402
from musicrep.pipelines import features as features_job  # noqa: E402


def make_catalog(root: str, tracks: int, seconds: float) -> None:
    for i in range(tracks):
        write_audio(os.path.join(root, f"t{i}.wav"), tone(200 + 50 * i, seconds, 44100), 44100)
    with open(os.path.join(root, "bad.mp3"), "w") as handle:
        handle.write("not audio\n")


def outputs(directory: str, kind: str) -> dict:
    manifest = read_manifest(directory)
    if kind == "features":
        data = {e["track_id"].numpy().decode(): e["log_mel"].numpy().tobytes() for e in read_shards(directory)}
    else:
        data = {}
        for path in committed_files(manifest, directory, "embeddings"):
            for row in pq.read_table(path).to_pylist():
                data[row["track_id"]] = np.asarray(row["embedding"], np.float32)
    errors = []
    for path in committed_files(manifest, directory, "errors"):
        errors += sorted(json.loads(line)["track_id"] for line in open(path) if line.strip())
    return {"data": data, "errors": sorted(errors)}


def equal(a: dict, b: dict) -> bool:
    if sorted(a["data"]) != sorted(b["data"]) or a["errors"] != b["errors"]:
        return False
    for key, value in a["data"].items():
        other = b["data"][key]
        if isinstance(value, bytes):
            if value != other:
                return False
        elif not np.allclose(value, other, atol=1e-6, rtol=0):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="musicrep-runners-")
    catalog = os.path.join(work, "catalog")
    os.makedirs(catalog)
    make_catalog(catalog, args.tracks, args.seconds)
    keras.utils.set_random_seed(7)
    model = os.path.join(work, "model")
    config = musicrep.model.SF_NFNET_VARIANTS["tiny"]
    musicrep.model.save(musicrep.model.build_sf_nfnet(config), model, config=config, source="benchmark")
    prism = _prism_or_exit()
    port = free_port()
    pool = start_worker_pool(port)
    runners = {
        "default": [],
        "prism_loopback": prism_args(prism),
        "prism_external": prism_args(prism, environment="EXTERNAL", config=f"localhost:{port}"),
        "prism_process": prism_args(prism, environment="PROCESS", config=json.dumps({"command": write_process_boot(work)})),
        "direct": ["--runner=DirectRunner", f"--prism_location={prism}"],
    }
    results, reference = [], {}
    try:
        for runner, beam_args in runners.items():
            base = os.path.join(work, runner)
            jobs = {
                "features": (features_job.run, ["--input", f"{catalog}/*", "--output", f"{base}/features"], "features"),
                "embed": (embed_job.run, ["--features", f"{base}/features", "--model", model, "--output", f"{base}/embed"], "embed"),
                "embed_audio": (embed_job.run, ["--audio", f"{catalog}/*", "--model", model, "--output", f"{base}/audio"], "embed"),
            }
            for job, (run, job_args, kind) in jobs.items():
                started = time.perf_counter()
                try:
                    with contextlib.redirect_stdout(sys.stderr):  # the jobs' summaries; stdout is the JSON
                        run([*job_args, *beam_args])
                    ran, error = True, None
                except Exception as exc:  # a runner that fails is a result here, not a crash
                    ran, error = False, f"{type(exc).__name__}: {str(exc)[:300]}"
                wall_s = round(time.perf_counter() - started, 1)
                same = None
                if ran:
                    got = outputs(job_args[job_args.index("--output") + 1], kind)
                    reference.setdefault(job, got)
                    same = equal(got, reference[job])
                results.append({"runner": runner, "job": job, "ran": ran, "equal_to_default": same, "wall_s": wall_s, "error": error})
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        os.killpg(pool.pid, signal.SIGKILL)
    print(json.dumps({"tracks": args.tracks, "seconds_per_track": args.seconds, "cpus": os.cpu_count(), "results": results}, indent=1))


def _prism_or_exit() -> str:
    from musicrep.pipelines.options import local_prism_binary

    found = local_prism_binary()
    if not found:
        sys.exit("no Prism binary: go install github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0, or set MUSICREP_PRISM")
    return found


if __name__ == "__main__":
    main()
