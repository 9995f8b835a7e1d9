"""How often `features` succeeds on two Flink TaskManagers with a LOOPBACK harness, served by
Beam's own worker pool (workers keyed by id alone) or by musicrep's (keyed by caller and id).
Prints one JSON line per run and a summary line.

    python benchmarks/flink_pool.py [--runs 5] [--pool both|beam|musicrep]

Needs `musicrep flink-cluster fetch` (Java, Maven); starts and stops its own cluster of one
JobManager and two one-slot TaskManagers on 127.0.0.1. "beam" turns musicrep's pool off
for the run (the launcher then leaves LOOPBACK to Beam), to show what it is for.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

from musicrep import flink_cluster
from musicrep.pipelines import features as features_job
from musicrep.pipelines import harness
from musicrep.testing import write_synth_catalog


def run_many(pool: str, runs: int, work: pathlib.Path, jar: pathlib.Path) -> dict:
    cluster = flink_cluster.start(work / f"cluster-{pool}", flink_cluster.ClusterSpec(taskmanagers=2, slots=1))
    shared_pool_runners = harness.SHARED_POOL_RUNNERS
    harness.SHARED_POOL_RUNNERS = shared_pool_runners if pool == "musicrep" else ()
    outcomes = []
    try:
        for run in range(runs):
            args = ["--input", f"{work}/catalog/track_*", "--output", str(work / f"out-{pool}-{run}"), "--shards", "2",
                    "--runner=FlinkRunner", f"--flink_master={cluster.master}", f"--flink_job_server_jar={jar}",
                    "--environment_type=LOOPBACK", "--parallelism=2"]
            started = time.perf_counter()
            try:
                features_job.run(args)
                error = None
            except Exception as failure:  # a failed run is the measurement, not a crash
                error = str(failure).split("\n")[0][:300]
            outcomes.append({"pool": pool, "run": run, "ok": error is None, "error": error,
                             "wall_s": round(time.perf_counter() - started, 1)})
            print(json.dumps(outcomes[-1]), flush=True)
    finally:
        harness.SHARED_POOL_RUNNERS = shared_pool_runners
        flink_cluster.stop(cluster.directory)
    return {"pool": pool, "runs": runs, "succeeded": sum(o["ok"] for o in outcomes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pool", choices=("both", "beam", "musicrep"), default="both")
    args = parser.parse_args()
    _, jar = flink_cluster.fetch()
    with tempfile.TemporaryDirectory(prefix="flink-pool-") as work:
        work = pathlib.Path(work)
        write_synth_catalog(str(work / "catalog"), n_tracks=8, seed=3, duration_s=4.0)
        pools = ("beam", "musicrep") if args.pool == "both" else (args.pool,)
        print(json.dumps({"summary": [run_many(pool, args.runs, work, jar) for pool in pools]}))


if __name__ == "__main__":
    main()
