"""Scheduled re-embedding into a store that is a Delta Lake table (musicrep.store).

    musicrep reembed --catalog 'gs://b/catalog/**' --model gs://b/models/f0 --store gs://b/store

The launcher lists the catalog (size, mtime and, on GCS, generation/crc32c/md5 of every
object: no audio is read), compares the listing with the table's index columns
(musicrep.store.changes) and writes what the run must do into STORE/_staging/RUN_ID/:
`compute.parquet` (objects to read: new, changed, stale) and `rewrite.parquet` (rows of
existing data files that the run supersedes or deletes). The Beam pipeline then

- reads and hashes the objects to compute; a changed object whose hash equals its row's
  keeps its embedding (no decode, no model call), the others go through log-mel and the
  model (the `compute` transform: EmbedAudio in the real job);
- writes the new rows as fresh Parquet files into STORE/data/RUN_ID/part-*.parquet
  (about ROWS_PER_FILE rows each, one file per hash bucket of track ids) and the dead
  letters into STORE/_errors/RUN_ID/errors.jsonl;
- rewrites each data file holding superseded or deleted rows into
  STORE/data/RUN_ID/rewrite-*.parquet without them (Delta deletes are copy-on-write).

It deletes and renames nothing. After it succeeded, the launcher commits all of it in ONE
Delta transaction (musicrep.store.table.commit) whose commit info records the run. A run
that finds nothing to do starts no pipeline and commits nothing; a run killed at any
moment leaves the table as it was (its files are not in the log; `musicrep store vacuum`
removes them).
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import logging
import math
import time
import zlib
from typing import Callable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics

from musicrep import fileio
from musicrep.pipelines import commit as run_commit
from musicrep.pipelines.embed import embed_pipeline_options
from musicrep.pipelines import device_embed
from musicrep.pipelines.embed_transforms import EmbedTracks
from musicrep.pipelines.features import ExtractLogMel
from musicrep.features.windows import WindowSpec
from musicrep.pipelines.inference import EmbeddingModelHandler, InferenceSpec
from musicrep.model.engines import AUTO_ENGINE
from musicrep.pipelines.options import METRICS_NAMESPACE
from musicrep.pipelines.settings import add_model_arguments, inference_spec, window_spec
from musicrep.pipelines.outputs import ERRORS_PREFIX
from musicrep.store import changes, table

logger = logging.getLogger(__name__)

ERRORS_DIR = "_errors"
COMPUTE_MANIFEST = "compute.parquet"
REWRITE_MANIFEST = "rewrite.parquet"
CONTENT_UNCHANGED = "content_unchanged"  # track ids whose bytes hashed as before
PART_PREFIX = "part"
REWRITE_PREFIX = "rewrite"


class EmbedAudio(beam.PTransform):
    """{"tracks": (track_id, uri), "known": (track_id, content_sha256)} →
    {"rows": embedding rows, "errors": dead letters, "unchanged": track ids whose bytes
    hash to the known value (not decoded)}: decode + log-mel + model."""

    def __init__(
        self, *, metadata, windows: WindowSpec, handler: EmbeddingModelHandler, time_budget_s: float | None = None
    ):
        super().__init__()
        self._metadata = metadata
        self._windows = windows
        self._handler = handler
        self._time_budget_s = time_budget_s

    def expand(self, inputs):
        compute = device_embed.audio_compute(metadata=self._metadata, windows=self._windows, time_budget_s=self._time_budget_s)
        extracted = inputs["tracks"] | "ExtractLogMel" >> ExtractLogMel(
            self._metadata.features, existing=inputs["known"], compute=compute
        )
        streams = {"chunks": extracted["features"], "partials": extracted["partials"]}
        embedded = streams | "EmbedTracks" >> EmbedTracks(
            metadata=self._metadata, windows=self._windows, handler=self._handler
        )
        errors = (extracted["errors"], embedded["errors"]) | "AllErrors" >> beam.Flatten()
        unchanged = extracted["skipped"] | "UnchangedIds" >> beam.Map(lambda pair: pair[0])
        return {"rows": embedded["rows"], "errors": errors, "unchanged": unchanged}


class WriteLines(beam.PTransform):
    """Strings → one text file at `path` (one per line), written by one worker with a
    whole-object write; nothing when there are none. Unlike Beam's text sink it needs no
    rename on finalisation (GCS emulators lack the batch API Beam renames with)."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, lines):
        return (
            lines
            | "OneKey" >> beam.Map(lambda line: (None, line))
            | "Gather" >> beam.GroupByKey()
            | "Write" >> beam.Map(_write_lines, self._path)
        )


def _write_lines(keyed_lines, path: str) -> str:
    _, lines = keyed_lines
    fileio.write_text(path, "".join(f"{line}\n" for line in sorted(lines)))
    return path


class WriteDataFile(beam.DoFn):
    """(file number, rows) → RUN_DIR/part-NNNNN-of-MMMMM.parquet, rows sorted by track id.

    Rows are assigned to files by a hash of the track id, so each file holds about
    ROWS_PER_FILE rows whatever the runner's bundles (Beam's Parquet sink shards batches
    of rows, not rows); the fixed name makes a retried bundle write the same file again."""

    def __init__(self, *, run_dir: str, arrow_schema: pa.Schema, num_files: int):
        self._run_dir = run_dir
        self._schema = arrow_schema
        self._num_files = num_files
        self._written = Metrics.counter(METRICS_NAMESPACE, "tracks_written")

    def process(self, element) -> Iterator[str]:
        number, rows = element
        rows = sorted(rows, key=lambda row: row["track_id"])
        target = fileio.join(self._run_dir, f"{PART_PREFIX}-{number:05d}-of-{self._num_files:05d}.parquet")
        fileio.write_bytes(target, _parquet_bytes(pa.Table.from_pylist(rows, schema=self._schema)))
        self._written.inc(len(rows))
        yield target


class RewriteDataFile(beam.DoFn):
    """(data file, its superseded rows) → a copy without the rows that go, written to
    DATA_DIR/rewrite-<hash of the path>.parquet (a fixed name: a retried bundle writes the
    same file again). Rows whose bytes hashed as before stay, with the listing's source
    columns. A file with nothing to change is not rewritten."""

    def __init__(self, *, store: str, run_dir: str, arrow_schema: pa.Schema):
        self._store = store
        self._run_dir = run_dir
        self._schema = arrow_schema
        self._rewritten = Metrics.counter(METRICS_NAMESPACE, "files_rewritten")

    def process(self, element, unchanged: dict[str, bool]) -> Iterator[str]:
        data_file, entries = element
        entries = {entry["track_id"]: entry for entry in entries}
        drop = {
            track_id
            for track_id, entry in entries.items()
            if not entry["keep_if_unchanged"] or track_id not in unchanged
        }
        with fileio.open_read(table.data_uri(self._store, data_file)) as handle:
            original = pq.read_table(handle)
        sources = {row["track_id"]: row for row in original.select(["track_id", *table.SOURCE_COLUMNS]).to_pylist()}
        refresh = {
            track_id: entry
            for track_id, entry in entries.items()
            if track_id not in drop and any(sources.get(track_id, {}).get(n) != entry[n] for n in table.SOURCE_COLUMNS)
        }
        if not drop and not refresh:  # every row stays as it is
            return
        kept = original.filter(pc.invert(pc.is_in(original["track_id"], pa.array(sorted(drop), pa.string()))))
        kept = _with_sources(kept, refresh).select(self._schema.names).cast(self._schema)
        target = fileio.join(self._run_dir, rewrite_name(data_file))
        fileio.write_bytes(target, _parquet_bytes(kept))
        self._rewritten.inc()
        yield target


def rewrite_name(data_file: str) -> str:
    return f"{REWRITE_PREFIX}-{hashlib.sha1(data_file.encode()).hexdigest()[:20]}.parquet"


def _with_sources(rows: pa.Table, refresh: dict[str, dict]) -> pa.Table:
    if not refresh:
        return rows
    track_ids = rows["track_id"].to_pylist()
    for name in table.SOURCE_COLUMNS:
        old = rows[name].to_pylist()
        new = [refresh[t][name] if t in refresh else value for t, value in zip(track_ids, old)]
        rows = rows.set_column(rows.schema.get_field_index(name), rows.schema.field(name), pa.array(new, rows.schema.field(name).type))
    return rows


def _with_source_columns(joined) -> Iterator[dict]:
    _, groups = joined
    for row in groups["rows"]:
        source = groups["listing"][0]
        yield {**row, **{name: source[name] for name in table.SOURCE_COLUMNS}}


def build_pipeline(
    pipeline: beam.Pipeline,
    *,
    store: str,
    run_id: str,
    compute: beam.PTransform,
    arrow_schema: pa.Schema,
    num_files: int,
) -> None:
    """The reembed job over the manifests in STORE/_staging/RUN_ID/ (see the module doc)."""
    staging = fileio.join(store, run_commit.STAGING_DIR, run_id)
    run_dir = fileio.join(store, table.DATA_DIR, run_id)
    listing = pipeline | "ReadComputeManifest" >> beam.io.ReadFromParquet(fileio.join(staging, COMPUTE_MANIFEST))
    tracks = listing | "TrackUris" >> beam.Map(lambda row: (row["track_id"], row["uri"]))
    known = listing | "KnownHashes" >> beam.FlatMap(
        lambda row: [(row["track_id"], row["known_sha256"])] if row["known_sha256"] else []
    )
    computed = {"tracks": tracks, "known": known} | "Compute" >> compute
    rows = (
        {
            "rows": computed["rows"] | "KeyRows" >> beam.Map(lambda row: (row["track_id"], row)),
            "listing": listing | "KeyListing" >> beam.Map(lambda row: (row["track_id"], row)),
        }
        | "JoinListing" >> beam.CoGroupByKey()
        | "AddSourceColumns" >> beam.FlatMap(_with_source_columns)
    )
    _ = (
        rows
        | "AssignDataFile" >> beam.Map(lambda row: (zlib.crc32(row["track_id"].encode()) % num_files, row))
        | "GroupByDataFile" >> beam.GroupByKey()
        | "WriteDataFiles" >> beam.ParDo(WriteDataFile(run_dir=run_dir, arrow_schema=arrow_schema, num_files=num_files))
    )
    _ = (
        computed["errors"]
        | "ErrorsToJson" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False, sort_keys=True))
        | "WriteErrors" >> WriteLines(fileio.join(store, ERRORS_DIR, run_id, f"{ERRORS_PREFIX}.jsonl"))
    )
    unchanged = computed["unchanged"]
    _ = unchanged | "WriteUnchanged" >> WriteLines(fileio.join(staging, f"{CONTENT_UNCHANGED}.txt"))
    _ = (
        pipeline
        | "ReadRewriteManifest" >> beam.io.ReadFromParquet(fileio.join(staging, REWRITE_MANIFEST))
        | "KeyByDataFile" >> beam.Map(lambda row: (row[table.DATA_FILE], row))
        | "GroupRowsByDataFile" >> beam.GroupByKey()
        | "RewriteDataFiles" >> beam.ParDo(
            RewriteDataFile(store=store, run_dir=run_dir, arrow_schema=arrow_schema),
            unchanged=beam.pvalue.AsDict(unchanged | "AsKeys" >> beam.Map(lambda track_id: (track_id, True))),
        )
    )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="musicrep reembed",
        description="Incrementally re-embed a catalog into a Delta Lake store: only new, changed "
        "(size/mtime/generation) or stale (model, front end, window settings, engine, precision) tracks are read and "
        "embedded; one Delta commit per run. Options not listed here go to Beam.",
    )
    parser.add_argument("--catalog", required=True, help="glob of audio files (local or gs://)")
    parser.add_argument("--model", required=True, help="model export directory (local or gs://)")
    parser.add_argument("--store", required=True, help="the store: a Delta table directory (local or gs://)")
    add_model_arguments(parser)
    parser.add_argument(
        "--verify-content",
        action="store_true",
        help="read and hash every object, not only new or changed ones (for untrusted object metadata)",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        metavar="KEY=VALUE",
        help="delta-rs object-store option for the store (repeatable; GCS uses Application Default Credentials)",
    )
    return parser.parse_known_args(argv)


def run_settings(metadata, windows: WindowSpec, inference: InferenceSpec, arrow_schema: pa.Schema) -> dict:
    """The config columns every row of this run carries (those the schema has)."""
    values = {
        "model_id": metadata.model_id,
        "feature_config_sha256": metadata.feature_config_sha256,
        "window_spec": windows.key(metadata.features),
        "max_windows": windows.max_windows,
        "aggregate": windows.aggregate,
        "engine": inference.engine,
        "precision": inference.precision,
    }
    if inference.engine == AUTO_ENGINE:
        # Only the workers know which engine ran: tracks of any engine at this precision
        # are up to date (as embed --skip-existing reuses them).
        del values["engine"]
    return {name: values[name] for name in table.config_columns(arrow_schema) if name in values}


def run(argv: list[str] | None = None, *, make_compute: Callable[..., beam.PTransform] | None = None) -> int:
    """One reembed run. `make_compute(settings=, embedding_size=)` replaces EmbedAudio
    (the benchmark and tests inject a model-free step: musicrep.store.synthetic)."""
    from musicrep.model.export import read_metadata

    args, beam_args = parse_args(argv)
    pipeline_options = embed_pipeline_options(beam_args)
    metadata = read_metadata(args.model)
    windows = window_spec(args, metadata.features)
    inference = inference_spec(args, pipeline_options)
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    options = table.storage_options(args.storage_option)
    arrow_schema = table.table_schema(metadata.embedding_size)
    delta = table.open_or_create(args.store, metadata.embedding_size, options)
    read_version = delta.version()
    settings = run_settings(metadata, windows, inference, arrow_schema)
    listing = changes.list_catalog(args.catalog)
    index = table.read_index(delta)
    plan = changes.plan_run(listing, index, settings, verify_content=args.verify_content)
    listed_s = time.perf_counter() - started
    logger.info("reembed: %s (listing and comparing took %.1f s)", plan.counts, listed_s)
    for uri in plan.duplicates:
        logger.warning("reembed: %s not used: another file has the same track id", uri)
    record = {
        "run_id": None,
        "started_at": started_at.isoformat(),
        "catalog": args.catalog,
        "model_uri": args.model,
        "settings": settings,
        "read_version": read_version,
        "plan": plan.counts,
        "listing_s": round(listed_s, 2),
    }
    if plan.nothing_to_do:
        print(
            f"reembed: {plan.counts['listed']} tracks listed, all unchanged: nothing read, nothing committed "
            f"(store version {read_version}): {args.store}"
        )
        return 0

    staged = run_commit.start_run(args.store)
    record["run_id"] = staged.run_id
    staging = staged.staging_dir
    fileio.write_bytes(fileio.join(staging, COMPUTE_MANIFEST), _parquet_bytes(plan.compute))
    fileio.write_bytes(fileio.join(staging, REWRITE_MANIFEST), _parquet_bytes(plan.rewrite))
    if make_compute is not None:
        compute = make_compute(settings=settings, embedding_size=metadata.embedding_size)
    else:
        compute = EmbedAudio(
            metadata=metadata,
            windows=windows,
            handler=device_embed.model_handler(args.model, inference, windows),
            time_budget_s=args.time_budget_s,
        )
    pipeline = beam.Pipeline(options=pipeline_options)
    build_pipeline(
        pipeline,
        store=args.store,
        run_id=staged.run_id,
        compute=compute,
        arrow_schema=arrow_schema,
        num_files=max(1, math.ceil(plan.compute.num_rows / table.ROWS_PER_FILE)),
    )
    run_commit.run_to_success(pipeline)
    pipeline_s = time.perf_counter() - started - listed_s

    result = _collect(args.store, staged.run_id, plan, index)
    record.update(result["counts"], pipeline_s=round(pipeline_s, 2), errors=f"{ERRORS_DIR}/{staged.run_id}/{ERRORS_PREFIX}.jsonl")
    run_commit.pause_at("before_commit")
    version = read_version
    if result["adds"] or result["removes"]:
        record["seconds"] = round(time.perf_counter() - started, 2)
        version, commit_s = table.commit(delta, adds=result["adds"], removes=result["removes"], run=record)
        record["commit_s"] = round(commit_s, 3)
    fileio.delete(result["empty"])
    fileio.remove_tree(staging)
    print(summary(record, store=args.store, version=version, committed=version != read_version))
    return 0


def _parquet_bytes(rows: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(rows, buffer)
    return buffer.getvalue()


def _collect(store: str, run_id: str, plan: changes.Plan, index: pa.Table) -> dict:
    """What the successful pipeline wrote → add/remove actions and the run's counts."""
    run_dir = fileio.join(store, table.DATA_DIR, run_id)
    relative = f"{table.DATA_DIR}/{run_id}"
    parts = [table.describe_file(store, f"{relative}/{fileio.basename(p)}") for p in fileio.glob(fileio.join(run_dir, f"{PART_PREFIX}-*.parquet"))]
    originals = {rewrite_name(path): path for path in set(plan.rewrite.column(table.DATA_FILE).to_pylist())}
    rewritten = [
        table.describe_file(store, f"{relative}/{fileio.basename(p)}")
        for p in fileio.glob(fileio.join(run_dir, f"{REWRITE_PREFIX}-*.parquet"))
    ]
    removes = sorted([originals[fileio.basename(file.path)] for file in rewritten] + plan.removed_files)
    rows_per_file = _rows_per_file(index)
    unchanged_path = fileio.join(store, run_commit.STAGING_DIR, run_id, f"{CONTENT_UNCHANGED}.txt")
    unchanged = set(fileio.read_text(unchanged_path).split()) if fileio.exists(unchanged_path) else set()
    errors_path = fileio.join(store, ERRORS_DIR, run_id, f"{ERRORS_PREFIX}.jsonl")
    failed = len(fileio.read_text(errors_path).splitlines()) if fileio.exists(errors_path) else 0
    adds = [file for file in parts + rewritten if file.num_rows > 0]
    rows_rewritten = sum(file.num_rows for file in rewritten)
    counts = {
        "tracks_embedded": sum(file.num_rows for file in parts),
        "tracks_content_unchanged": len(unchanged),
        "tracks_failed": failed,
        "rows_removed": sum(rows_per_file.get(path, 0) for path in removes) - rows_rewritten,
        "rows_rewritten": rows_rewritten,
        "files_added": len(adds),
        "files_removed": len(removes),
    }
    empty = [fileio.join(store, file.path) for file in parts + rewritten if file.num_rows == 0]
    return {"adds": adds, "removes": removes, "counts": counts, "empty": empty}


def _rows_per_file(index: pa.Table) -> dict[str, int]:
    counted = index.group_by(table.DATA_FILE).aggregate([("track_id", "count")])
    return dict(zip(counted[table.DATA_FILE].to_pylist(), counted["track_id_count"].to_pylist()))


def summary(record: dict, *, store: str, version: int, committed: bool) -> str:
    plan = record["plan"]
    lines = [
        f"reembed: {plan['listed']} tracks listed: {plan['new']} new, {plan['changed']} changed, "
        f"{plan['stale']} stale, {plan['deleted']} deleted, {plan['unchanged']} unchanged"
        + (f" ({plan['verified']} re-hashed)" if plan["verified"] else ""),
        f"  {record['tracks_embedded']} embedded, {record['tracks_content_unchanged']} read but unchanged, "
        f"{record['tracks_failed']} failed; {record['rows_removed']} rows removed, "
        f"{record['rows_rewritten']} rows rewritten in {record['files_removed']} files",
        (
            f"  committed store version {version} ({record['files_added']} files added): {store}"
            if committed
            else f"  nothing to commit: store left at version {version}: {store}"
        ),
    ]
    if record["tracks_failed"]:
        lines.append(f"  errors: {fileio.join(store, record['errors'])}")
    return "\n".join(lines)
