"""Benchmark of the reembed store: what a run costs as a function of what changed.

    python benchmarks/store.py                      # 100,000 objects on local disk
    python benchmarks/store.py --objects 10000 --fake-gcs ~/go/bin/fake-gcs-server   # gs:// in an emulator

A synthetic catalog of small objects; the table is seeded by a first reembed run through
the same writer (the model-free compute step musicrep.pipelines.synthetic: it reads and hashes
each object as the real job does, then derives a 1728-d embedding from the hash). Then:

  (a) nothing changed      (b) 1 % of objects modified
  (c) 1 % deleted, 1 % added   (d) a new model id (every row stale)

Per run, one JSON object: wall seconds, listing+compare seconds, audio bytes read (summed by
the pipeline over what it opened) against the bytes of the objects that changed, data
files and rows written, rows rewritten by copy-on-write deletes, commit seconds, whether
a commit happened. Targets: (a) 0 bytes read and no commit; (b), (c) bytes read ≤ 1.1 ×
changed bytes; listing and comparing 100,000 objects < 60 s on 2 cores.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import tempfile
import time

import numpy as np

from musicrep import fileio
from musicrep.pipelines import reembed
from musicrep.store import changes, table
from musicrep.pipelines.outputs import read_side_total
from musicrep.pipelines.synthetic import SyntheticEmbedding, write_synthetic_export

RUNNER = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


def object_name(index: int) -> str:
    return f"d{index % 100:02d}/track{index:07d}.bin"


def object_bytes(index: int, salt: int, rng: np.random.Generator) -> bytes:
    return f"{index}:{salt}:".encode() + rng.bytes(int(rng.integers(64, 192)))


def write_objects(root: str, indices, salt: int, rng: np.random.Generator) -> int:
    total = 0
    for index in indices:
        data = object_bytes(int(index), salt, rng)
        uri = fileio.join(root, object_name(int(index)))
        if fileio.is_local(uri):
            os.makedirs(os.path.dirname(uri), exist_ok=True)
            with open(uri, "wb") as handle:
                handle.write(data)
        else:
            fileio.write_bytes(uri, data)
        total += len(data)
    return total


class Timed:
    """Wraps the module functions reembed calls, to time the launcher's steps."""

    def __init__(self, targets: list[tuple[object, str]]):
        self.seconds: dict[str, float] = {}
        for module, name in targets:
            setattr(module, name, self._wrap(name, getattr(module, name)))

    def _wrap(self, name, function):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

        return timed


TIMED = Timed([(changes, "list_catalog"), (table, "read_index"), (changes, "plan_run"), (table, "commit")])


def measure(
    name: str, *, catalog: str, store: str, model: str, workdir: str, changed_bytes: int, options: dict[str, str]
) -> dict:
    bytes_path = os.path.join(workdir, f"bytes-read-{name}.txt")
    version_before = _version(store, options)
    TIMED.seconds.clear()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the runs' summaries; stdout is the JSON
        reembed.run(
            ["--catalog", f"{catalog}/**", "--model", model, "--store", store, *RUNNER,
             *(f"--storage-option={key}={value}" for key, value in options.items())],
            make_compute=functools.partial(SyntheticEmbedding, bytes_read_path=bytes_path),
        )
    wall_s = time.perf_counter() - started
    steps = {key: round(value, 3) for key, value in TIMED.seconds.items()}
    delta = table.open_table(store, options)
    committed = delta.version() != version_before
    run = table.runs(delta, 1)[0]["run"] if committed else {}
    bytes_read = read_side_total(bytes_path)
    return {
        "run": name,
        "wall_s": round(wall_s, 2),
        "listing_and_compare_s": round(sum(steps.get(k, 0.0) for k in ("list_catalog", "read_index", "plan_run")), 2),
        "step_s": steps,
        "audio_bytes_read": bytes_read,
        "changed_bytes": changed_bytes,
        "read_over_changed": round(bytes_read / changed_bytes, 4) if changed_bytes else None,
        "committed": committed,
        "version": delta.version(),
        "plan": run.get("plan"),
        "data_files_written": run.get("files_added", 0),
        "rows_written": run.get("tracks_embedded", 0) + run.get("rows_rewritten", 0),
        "rows_embedded": run.get("tracks_embedded", 0),
        "rows_rewritten_by_deletes": run.get("rows_rewritten", 0),
        "files_removed": run.get("files_removed", 0),
        "commit_s": steps.get("commit"),
    }


def _version(store: str, options: dict[str, str]) -> int | None:
    delta = table.open_table(store, options)
    return None if delta is None else delta.version()


def _start_fake_gcs(binary: str, workdir: str, stack: contextlib.ExitStack) -> tuple[str, dict[str, str]]:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from apache_beam.io.gcp import gcsio
    from gcs_xml_shim import delete_one_by_one, start_fake_gcs

    fake = start_fake_gcs(os.path.expanduser(binary), workdir, ["bench"])
    stack.callback(fake.stop)
    os.environ["STORAGE_EMULATOR_HOST"] = fake.endpoint
    gcsio.GcsIO.delete_batch = delete_one_by_one
    return "gs://bench", {"google_service_account": fake.service_account}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--embedding-size", type=int, default=1728)
    parser.add_argument("--catalog-root", default=None, help="where the catalog and store go (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fake-gcs",
        metavar="BINARY",
        help="put catalog and store in a fake-gcs-server started here (e.g. ~/go/bin/fake-gcs-server; "
        "delta-rs reaches it through tests/gcs_xml_shim.py)",
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="musicrep-store-bench-") as workdir, contextlib.ExitStack() as stack:
        root, options = args.catalog_root or workdir, {}
        if args.fake_gcs:
            root, options = _start_fake_gcs(args.fake_gcs, workdir, stack)
        catalog, store = fileio.join(root, "catalog"), fileio.join(root, "store")
        model_a, model_b = os.path.join(workdir, "model-a"), os.path.join(workdir, "model-b")
        write_synthetic_export(model_a, model_id="bench-model-a", embedding_size=args.embedding_size)
        write_synthetic_export(model_b, model_id="bench-model-b", embedding_size=args.embedding_size)
        n, one_percent = args.objects, max(1, args.objects // 100)
        started = time.perf_counter()
        catalog_bytes = write_objects(catalog, range(n), 0, rng)
        results = {"objects": n, "catalog_bytes": catalog_bytes, "write_catalog_s": round(time.perf_counter() - started, 1)}
        run = functools.partial(measure, catalog=catalog, store=store, workdir=workdir, options=options)

        results["seed"] = run("seed", model=model_a, changed_bytes=catalog_bytes)
        results["a_unchanged"] = run("a", model=model_a, changed_bytes=0)
        modified = rng.choice(n, one_percent, replace=False)
        time.sleep(0.01)  # a new mtime even on coarse clocks
        results["b_1pct_modified"] = run("b", model=model_a, changed_bytes=write_objects(catalog, modified, 1, rng))
        deleted = rng.choice(np.setdiff1d(np.arange(n), modified), one_percent, replace=False)
        fileio.delete([fileio.join(catalog, object_name(int(i))) for i in deleted])
        added_bytes = write_objects(catalog, range(n, n + one_percent), 0, rng)
        results["c_1pct_deleted_1pct_added"] = run("c", model=model_a, changed_bytes=added_bytes)
        current_bytes = sum(info.size_bytes for info in fileio.list_files(f"{catalog}/**"))
        results["d_new_model"] = run("d", model=model_b, changed_bytes=current_bytes)
        results["targets"] = {
            "a_reads_nothing_commits_nothing": results["a_unchanged"]["audio_bytes_read"] == 0
            and not results["a_unchanged"]["committed"],
            "b_read_le_1.1x_changed": results["b_1pct_modified"]["read_over_changed"] <= 1.1,
            "c_read_le_1.1x_changed": results["c_1pct_deleted_1pct_added"]["read_over_changed"] <= 1.1,
            "listing_and_compare_lt_60s": max(
                r["listing_and_compare_s"] or 0 for r in (results["b_1pct_modified"], results["d_new_model"])
            )
            < 60,
        }
        results["cpu_count"] = os.cpu_count()
        results["where"] = "fake-gcs-server (gs://)" if args.fake_gcs else root
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
