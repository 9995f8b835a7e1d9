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
  STORE/data/RUN_ID/rewrite-*.parquet without them (Delta deletes are copy-on-write);
- writes, as side files of its staging folder, the ids whose bytes hashed as before.

What those files are and how they become a commit is the store's (musicrep.store.runs);
the DoFns here are thin wrappers. The pipeline deletes and renames nothing. After it
succeeded, the launcher commits all of it in ONE Delta transaction
(musicrep.store.table.commit) whose commit info records the run. A run
that finds nothing to do starts no pipeline and commits nothing; a run killed at any
moment leaves the table as it was (its files are not in the log; `musicrep store vacuum`
removes them).
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import time
from typing import Callable, Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from musicrep import fileio
from musicrep.contracts import schema
from musicrep.contracts.layout import METRICS_NAMESPACE
from musicrep.contracts.window_spec import WindowSpec
from musicrep.pipelines import commit as run_commit
from musicrep.pipelines import launch
from musicrep.pipelines.embed import embed_pipeline_options
from musicrep.pipelines import device_embed
from musicrep.pipelines.embed_transforms import EmbedTracks
from musicrep.pipelines.features import ExtractLogMel
from musicrep.pipelines.inference import EmbeddingModelHandler
from musicrep.pipelines.outputs import WriteSortedLines, read_side_lines
from musicrep.pipelines.settings import InferenceSpec, ReembedSettings
from musicrep.store import changes, runs, table
from musicrep.model.engines import AUTO_ENGINE

logger = logging.getLogger(__name__)

COMPUTE_MANIFEST = "compute.parquet"
REWRITE_MANIFEST = "rewrite.parquet"
CONTENT_UNCHANGED = "content_unchanged.txt"  # side file: track ids whose bytes hashed as before


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


class WriteDataFile(beam.DoFn):
    """(file number, rows) → RUN_DIR/part-NNNNN-of-MMMMM.parquet (musicrep.store.runs)."""

    def __init__(self, *, run_dir: str, arrow_schema: pa.Schema, num_files: int):
        self._run_dir = run_dir
        self._schema = arrow_schema
        self._num_files = num_files
        self._written = Metrics.counter(METRICS_NAMESPACE, "tracks_written")

    def process(self, element) -> Iterator[str]:
        number, rows = element
        rows = list(rows)
        yield runs.write_part(directory=self._run_dir, number=number, num_files=self._num_files, rows=rows,
                              arrow_schema=self._schema)
        self._written.inc(len(rows))


class RewriteDataFile(beam.DoFn):
    """(data file, its superseded rows) → a copy without the rows that go
    (musicrep.store.runs.rewrite_data_file); nothing for a file that stays as it is."""

    def __init__(self, *, store: str, run_dir: str, arrow_schema: pa.Schema):
        self._store = store
        self._run_dir = run_dir
        self._schema = arrow_schema
        self._rewritten = Metrics.counter(METRICS_NAMESPACE, "files_rewritten")

    def process(self, element, unchanged: dict[str, bool]) -> Iterator[str]:
        data_file, entries = element
        target = runs.rewrite_data_file(
            store=self._store, directory=self._run_dir, data_file=data_file, entries=list(entries),
            unchanged=unchanged, arrow_schema=self._schema,
        )
        if target is not None:
            self._rewritten.inc()
            yield target


def _with_source_columns(joined) -> Iterator[dict]:
    _, groups = joined
    for row in groups["rows"]:
        yield runs.with_source_columns(row, groups["listing"][0])


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
    staging = run_commit.StagedRun(store, run_id).staging_dir
    run_dir = runs.run_dir(store, run_id)
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
        | "AssignDataFile" >> beam.Map(lambda row: (runs.part_number(row["track_id"], num_files), row))
        | "GroupByDataFile" >> beam.GroupByKey()
        | "WriteDataFiles" >> beam.ParDo(WriteDataFile(run_dir=run_dir, arrow_schema=arrow_schema, num_files=num_files))
    )
    _ = (
        computed["errors"]
        | "ErrorsToJson" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False, sort_keys=True))
        | "WriteErrors" >> WriteSortedLines(runs.errors_path(store, run_id))
    )
    unchanged = computed["unchanged"]
    _ = unchanged | "WriteUnchanged" >> WriteSortedLines(fileio.join(staging, CONTENT_UNCHANGED))
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
    return {name: values[name] for name in schema.config_columns(arrow_schema) if name in values}


def run(
    argv: list[str] | ReembedSettings | None = None, *, make_compute: Callable[..., beam.PTransform] | None = None
) -> launch.JobResult:
    """One reembed run. `make_compute(settings=, embedding_size=)` replaces EmbedAudio
    (the benchmark and tests inject a model-free step: musicrep.pipelines.synthetic)."""
    settings = argv if isinstance(argv, ReembedSettings) else ReembedSettings.from_argv(argv)
    model, store = settings.model, settings.store
    metadata = model.metadata
    pipeline_options = embed_pipeline_options(list(settings.beam_args))
    inference = model.for_workers(pipeline_options)
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    options = dict(settings.storage_options)
    arrow_schema = schema.store_schema(metadata.embedding_size)
    delta = table.open_or_create(store, metadata.embedding_size, options)
    read_version = delta.version()
    row_settings = run_settings(metadata, model.windows, inference, arrow_schema)
    listing = changes.list_catalog(settings.catalog)
    index = table.read_index(delta)
    plan = changes.plan_run(listing, index, row_settings, verify_content=settings.verify_content)
    listed_s = time.perf_counter() - started
    logger.info("reembed: %s (listing and comparing took %.1f s)", plan.counts, listed_s)
    for uri in plan.duplicates:
        logger.warning("reembed: %s not used: another file has the same track id", uri)
    record = {
        "run_id": None,
        "started_at": started_at.isoformat(),
        "catalog": settings.catalog,
        "model_uri": model.model_uri,
        "settings": row_settings,
        "read_version": read_version,
        "plan": plan.counts,
        "listing_s": round(listed_s, 2),
    }
    if plan.nothing_to_do:
        return _result(record, store=store, version=read_version, seconds=time.perf_counter() - started)

    staged = run_commit.start_run(store)
    record["run_id"] = staged.run_id
    fileio.write_bytes(fileio.join(staged.staging_dir, COMPUTE_MANIFEST), runs.parquet_bytes(plan.compute))
    fileio.write_bytes(fileio.join(staged.staging_dir, REWRITE_MANIFEST), runs.parquet_bytes(plan.rewrite))
    if make_compute is not None:
        compute = make_compute(settings=row_settings, embedding_size=metadata.embedding_size)
    else:
        compute = EmbedAudio(
            metadata=metadata,
            windows=model.windows,
            handler=device_embed.model_handler(model.model_uri, inference, model.windows, metadata=metadata),
            time_budget_s=model.time_budget_s,
        )
    pipeline = beam.Pipeline(options=pipeline_options)
    build_pipeline(
        pipeline,
        store=store,
        run_id=staged.run_id,
        compute=compute,
        arrow_schema=arrow_schema,
        num_files=max(1, math.ceil(plan.compute.num_rows / table.ROWS_PER_FILE)),
    )
    run_commit.run_to_success(pipeline)
    pipeline_s = time.perf_counter() - started - listed_s

    errors = runs.errors_path(store, staged.run_id)
    written = runs.collect(
        store, staged.run_id, plan, index,
        content_unchanged=len(read_side_lines(fileio.join(staged.staging_dir, CONTENT_UNCHANGED))),
        failed=len(read_side_lines(errors)),
    )
    record.update(written.counts, pipeline_s=round(pipeline_s, 2), errors=f"{runs.ERRORS_DIR}/{staged.run_id}/{fileio.basename(errors)}")
    run_commit.pause_at("before_commit")
    version = read_version
    if written.adds or written.removes:
        record["seconds"] = round(time.perf_counter() - started, 2)
        version, commit_s = table.commit(delta, adds=written.adds, removes=written.removes, run=record, options=options)
        record["commit_s"] = round(commit_s, 3)
    fileio.delete(written.empty)
    fileio.remove_tree(staged.staging_dir)
    return _result(record, store=store, version=version, seconds=time.perf_counter() - started,
                   committed=version != read_version)


def _result(record: dict, *, store: str, version: int, seconds: float, committed: bool = False) -> launch.JobResult:
    plan = record["plan"]
    embedded, failed = record.get("tracks_embedded", 0), record.get("tracks_failed", 0)
    return launch.JobResult(
        job="reembed",
        run_id=record["run_id"],
        tracks_in=plan["new"] + plan["changed"] + plan["stale"] + plan["verified"],
        tracks_out=embedded,
        tracks_failed=failed,
        seconds=seconds,
        table_version=version,
        counts={**plan, **{k: v for k, v in record.items() if k.startswith(("tracks_", "rows_", "files_"))}},
        text=summary(record, store=store, version=version, committed=committed),
    )


def summary(record: dict, *, store: str, version: int, committed: bool) -> str:
    plan = record["plan"]
    if record["run_id"] is None:
        return (
            f"reembed: {plan['listed']} tracks listed, all unchanged: nothing read, nothing committed "
            f"(store version {version}): {store}"
        )
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
