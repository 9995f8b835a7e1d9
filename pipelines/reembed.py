"""Scheduled re-embedding: keep a store of one current embedding per catalog track.

    musicrep reembed --catalog 'gs://b/catalog/**/*.mp3' --model gs://b/models/f0 --store gs://b/store

Store layout:
  STORE/current/embeddings-*.parquet   one row per track (the embed job's schema)
  STORE/current/errors-*.jsonl         tracks of the last run that could not be embedded
  STORE/runs.jsonl                     one JSON line per run: when, model, counts, changed

Each run is the fused embed job (audio → log-mel → model) with --skip-existing on the
current rows: only tracks that are new, whose bytes changed, or that an older model or
front end embedded are computed; unchanged rows are carried over as they are. The new
set is written to STORE/staging-RUN/ and replaces current/ only when it differs, so a
run over an unchanged catalog computes nothing and leaves current/ byte-for-byte as it
was (runs.jsonl still gains a line saying so). Tracks gone from the catalog leave the
store with the next run that changes anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import time

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from musicrep.errors import ConfigError
from musicrep.pipelines import embed, schema
from musicrep.pipelines.features import check_source
from musicrep.pipelines.options import counter_values, threads_per_worker
from musicrep.pipelines.outputs import ERRORS_PREFIX

logger = logging.getLogger(__name__)

CURRENT = "current"
RUNS_FILE = "runs.jsonl"


def _files(directory: str, prefix: str) -> list[str]:
    pattern = FileSystems.join(directory, f"{prefix}-*-of-*")
    return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)


def _count_rows(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _replace_current(store: str, staging: str) -> None:
    current = FileSystems.join(store, CURRENT)
    old = _files(current, schema.EMBEDDINGS_PREFIX) + _files(current, ERRORS_PREFIX)
    if old:
        FileSystems.delete(old)
    new = _files(staging, schema.EMBEDDINGS_PREFIX) + _files(staging, ERRORS_PREFIX)
    if not FileSystems.exists(current):
        FileSystems.mkdirs(current)  # local disks; object stores have no directories
    FileSystems.rename(new, [FileSystems.join(current, FileSystems.split(path)[1]) for path in new])


def _remove_directory(directory: str) -> None:
    leftovers = [m.path for m in FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list]
    if leftovers:
        FileSystems.delete(leftovers)
    if FileSystems.get_scheme(directory) is None and os.path.isdir(directory):
        os.rmdir(directory)  # object stores have no empty directories to remove


def _append_run(store: str, run: dict) -> None:
    # Object stores cannot append: rewrite the (small) manifest with the new line.
    path = FileSystems.join(store, RUNS_FILE)
    previous = b""
    if FileSystems.exists(path):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            previous = handle.read()
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(previous + (json.dumps(run, sort_keys=True) + "\n").encode())


def read_runs(store: str) -> list[dict]:
    """The store's run manifest, oldest first."""
    path = FileSystems.join(store, RUNS_FILE)
    if not FileSystems.exists(path):
        return []
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return [json.loads(line) for line in handle.read().decode().splitlines() if line.strip()]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="musicrep reembed",
        description="Incrementally re-embed a catalog into a store: only new or changed tracks "
        "(content, model or front end) are computed. Options not listed here go to Beam.",
    )
    parser.add_argument("--catalog", required=True, help="glob of audio files or a track_id,uri manifest")
    parser.add_argument("--model", required=True, help="model export directory (local or gs://)")
    parser.add_argument("--store", required=True, help="store directory (local or gs://)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per model call (default 32)")
    parser.add_argument("--shards", type=int, default=0, help="Parquet files of the store (default: the runner decides)")
    parser.add_argument("--large-model", action="store_true", help="one model per machine (GPU workers)")
    return parser.parse_known_args(argv)


def run(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_source(args.catalog)
    started_at = datetime.datetime.now(datetime.timezone.utc)
    run_id = started_at.strftime("%Y%m%dT%H%M%S%fZ")
    current = FileSystems.join(args.store, CURRENT)
    staging = FileSystems.join(args.store, f"staging-{run_id}")
    current_files = _files(current, schema.EMBEDDINGS_PREFIX)

    started = time.perf_counter()
    options = embed.embed_pipeline_options(beam_args)
    pipeline = beam.Pipeline(options=options)
    embed.build_pipeline(
        pipeline,
        model_uri=args.model,
        output_dir=staging,
        audio=args.catalog,
        skip_existing=FileSystems.join(current, f"{schema.EMBEDDINGS_PREFIX}-*-of-*.parquet") if current_files else None,
        num_shards=args.shards,
        batch_size=args.batch_size,
        large_model=args.large_model,
        cpu_threads=threads_per_worker(options),
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = counter_values(result)

    carried = counters.get("tracks_skipped", 0)
    unchanged = (
        bool(current_files)
        and counters.get("tracks_embedded", 0) == 0
        and carried == _count_rows(current_files)
        and counters.get("tracks_failed", 0) == len(_error_lines(current))
    )
    if not unchanged:
        _replace_current(args.store, staging)
    _remove_directory(staging)
    from musicrep.model.export import read_metadata

    record = {
        "run_id": run_id,
        "started_at": started_at.isoformat(),
        "seconds": round(time.perf_counter() - started, 1),
        "catalog": args.catalog,
        "model_uri": args.model,
        "model_id": read_metadata(args.model).model_id,
        "tracks_read": counters.get("tracks_read", 0),
        "tracks_embedded": counters.get("tracks_embedded", 0),
        "tracks_unchanged": carried,
        "tracks_failed": counters.get("tracks_failed", 0),
        "windows_embedded": counters.get("windows_embedded", 0),
        "changed": not unchanged,
    }
    _append_run(args.store, record)
    print(
        f"reembed: {record['tracks_read']} tracks, {record['tracks_embedded']} embedded, "
        f"{carried} unchanged, {record['tracks_failed']} failed; store "
        f"{'updated' if record['changed'] else 'left as it was'}: {current}"
    )
    return 0


def _error_lines(directory: str) -> list[str]:
    lines = []
    for path in _files(directory, ERRORS_PREFIX):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            lines += [line for line in handle.read().decode().splitlines() if line.strip()]
    return lines
