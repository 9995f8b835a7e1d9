"""The `embed` job: log-mel shards (or raw audio) → one embedding per track in Parquet.

    musicrep embed --features 'gs://b/features/*.tfrecord.gz' --model gs://b/models/f0 --output gs://b/emb
    musicrep embed --audio 'gs://b/catalog/**/*.mp3' --model ... --output ...   # fused, no shards

Windows follow SPEC §4 (3 s at 0.5 Hz by default, see musicrep.features.windows); each
track's window embeddings are averaged into DIR/embeddings-RUN_ID-SSSSS-of-NNNNN.parquet
(schema: musicrep.contracts.schema). Inputs that cannot be embedded go to
DIR/errors-RUN_ID-SSSSS-of-NNNNN.jsonl with the stage and reason. DIR/_MANIFEST.json
lists the files of the last committed run (musicrep.pipelines.commit). The transforms
are in musicrep.pipelines.embed_transforms; this module wires them and runs the job.

--skip-existing PATTERN_OR_DIR reads earlier embeddings; a track whose (track_id,
content_sha256, model_id, window_spec, engine, precision) is already there is not
recomputed and its earlier row is copied to the output, so the output is always the complete set for
the input catalog (new, changed and unchanged tracks), ready to replace the old one.
"""
from __future__ import annotations

import logging
from typing import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from musicrep.contracts.shards import SHARD_KIND
from musicrep.manifest import MANIFEST_NAME, resolve_files
from musicrep.contracts import schema
from musicrep.contracts.layout import ERRORS_PREFIX, SHARD_TEMPLATE
from musicrep.pipelines import commit, launch
from musicrep.model.engines import AUTO_ENGINE
from musicrep.pipelines import device_embed
from musicrep.pipelines.embed_transforms import (
    EmbedTracks,
    ParseShardRecord,
    PlaceWindows,
    ReadShardFile,
    SkipExisting,
)
from musicrep.pipelines.features import ExtractLogMel, ListTracks
from musicrep.pipelines.options import flag_given, make_pipeline_options
from musicrep.pipelines.outputs import WriteDeadLetters
from musicrep.pipelines.settings import EmbedSettings, InferenceSpec

logger = logging.getLogger(__name__)

OUTPUT_PREFIXES = (schema.EMBEDDINGS_PREFIX, schema.WINDOWS_PREFIX, ERRORS_PREFIX)
CARRIED = "carried"  # totals of the run besides each output's records
WINDOWS_EMBEDDED = "windows_embedded"


def build_pipeline(pipeline: beam.Pipeline, settings: EmbedSettings, *, output_dir: str, inference: InferenceSpec) -> None:
    """The embed job: shards (or audio → log-mel) → windows → RunInference → Parquet, and
    the totals of the run (for the commit) written next to them in `output_dir`.

    `settings.features` and `settings.skip_existing` are committed output directories or
    globs; `inference` is the settings' InferenceSpec completed for the pipeline options.
    """
    metadata, windows = settings.model.metadata, settings.model.windows
    features, audio, skip_existing = settings.features, settings.audio, settings.skip_existing
    per_window, num_shards = settings.per_window, settings.shards
    existing_rows = existing_keys = None
    if skip_existing:
        existing_rows = (
            pipeline
            | "ExistingFiles" >> beam.Create(resolve_files(skip_existing, kind=schema.EMBEDDINGS_PREFIX))
            | "ReadExisting" >> beam.io.ReadAllFromParquet()
            | "SameModelAndFeatures" >> beam.Filter(
                _made_by,
                _reuse_key(metadata.model_id, windows.key(metadata.features), inference.engine, inference.precision),
            )
            | "KeyExisting" >> beam.Map(lambda row: (row["track_id"], row))
        )
        existing_keys = existing_rows | "ExistingHashes" >> beam.Map(lambda kv: (kv[0], kv[1]["content_sha256"]))

    if audio is not None:
        compute = device_embed.audio_compute(metadata=metadata, windows=windows, time_budget_s=settings.model.time_budget_s)
        extracted = (
            pipeline
            | "ListTracks" >> ListTracks(audio)
            | "ExtractLogMel" >> ExtractLogMel(metadata.features, existing=existing_keys, compute=compute)
        )
        chunks, partials = extracted["features"], extracted["partials"]
        input_errors, skipped = extracted["errors"], extracted["skipped"]
    else:
        read = (
            pipeline
            | "ShardFiles" >> beam.Create(resolve_files(features, kind=SHARD_KIND))
            | "SpreadShards" >> beam.Reshuffle()
            | "ReadShards" >> beam.ParDo(ReadShardFile()).with_outputs("errors", main="serialized")
        )
        parsed = read.serialized | "ParseRecords" >> beam.ParDo(ParseShardRecord()).with_outputs("errors", main="records")
        records, skipped = parsed.records, None
        input_errors = (read.errors, parsed.errors) | "InputErrors" >> beam.Flatten()
        if existing_keys is not None:
            kept = records | "SkipExisting" >> beam.ParDo(
                SkipExisting(), existing=beam.pvalue.AsDict(existing_keys)
            ).with_outputs("skipped", main="records")
            records, skipped = kept.records, kept.skipped
        placed = records | "PlaceWindows" >> beam.ParDo(PlaceWindows(metadata=metadata, windows=windows)).with_outputs(
            "partials", main="chunks"
        )
        chunks, partials = placed.chunks, placed.partials

    embedded = {"chunks": chunks, "partials": partials} | "EmbedTracks" >> EmbedTracks(
        metadata=metadata,
        windows=windows,
        handler=device_embed.model_handler(settings.model.model_uri, inference, windows, metadata=metadata),
        per_window=per_window,
    )
    rows = embedded["rows"]
    counted = {WINDOWS_EMBEDDED: rows}
    if existing_rows is not None:
        carried = (
            {"skipped": skipped, "existing": existing_rows}
            | "JoinSkipped" >> beam.CoGroupByKey()
            | "CarryExistingRows" >> beam.FlatMap(_carried_row)
        )
        counted[CARRIED] = carried
        rows = (rows, carried) | "AllRows" >> beam.Flatten()

    size = metadata.embedding_size
    errors = (input_errors, embedded["errors"]) | "AllErrors" >> beam.Flatten()
    _ = rows | "WriteEmbeddings" >> _write_parquet(output_dir, schema.EMBEDDINGS_PREFIX, schema.embedding_schema(size), num_shards)
    _ = errors | "WriteErrors" >> WriteDeadLetters(output_dir)
    counted.update({schema.EMBEDDINGS_PREFIX: rows, ERRORS_PREFIX: errors})
    if per_window:
        windows = embedded["windows"]
        _ = windows | "WriteWindows" >> _write_parquet(output_dir, schema.WINDOWS_PREFIX, schema.window_schema(size), 0)
        counted[schema.WINDOWS_PREFIX] = windows
    _ = counted | "CountOutputs" >> commit.write_totals(output_dir, {WINDOWS_EMBEDDED: _n_windows})


def _n_windows(row: dict) -> int:
    return row["n_windows"]


def _write_parquet(output_dir: str, prefix: str, arrow_schema, num_shards: int) -> beam.PTransform:
    embedding_size = arrow_schema.field("embedding").type.list_size
    return beam.io.WriteToParquet(
        FileSystems.join(output_dir, prefix),
        arrow_schema,
        row_group_buffer_size=schema.row_group_bytes(embedding_size),
        file_name_suffix=".parquet",
        num_shards=num_shards,
        shard_name_template=SHARD_TEMPLATE,
    )


def _reuse_key(model_id: str, window_key: str | None, engine: str | None, precision: str | None) -> tuple:
    return (model_id, window_key, engine, precision)


def _made_by(row: dict, key: tuple) -> bool:
    # The feature config is implied: an export fixes the front end it was trained with,
    # and PlaceWindows refuses records made with another. Rows pooled another way, or of
    # another engine or precision (bf16 differs from fp32 by ~1e-3), are recomputed
    # rather than mixed in. Batch size and model copies do not change the numbers.
    # With --engine auto (key engine "auto") only the workers know the engine, so rows of
    # any engine at the key's precision are reused.
    engine = row.get("engine") if key[2] != AUTO_ENGINE else AUTO_ENGINE
    return _reuse_key(row["model_id"], row.get("window_spec"), engine, row.get("precision")) == key


def _carried_row(joined: tuple[str, dict]) -> Iterator[dict]:
    _, groups = joined
    if groups["skipped"] and groups["existing"]:
        row = dict(groups["existing"][0])
        row["embedding"] = np.asarray(row["embedding"], np.float32)
        yield row


def embed_pipeline_options(beam_args: list[str]):
    """Pipeline options of the jobs that run the model (embed, reembed).

    On the embedded runner one worker runs the model on every core (TensorFlow's own
    thread pools): measured on 2 cores, F0 ran at 13.5 windows/s with one worker process
    and 8.6 with two. That one worker runs in the launcher's process ("in_memory"), so
    Beam, TensorFlow and OpenVINO are imported once, not again in a worker process:
    measured with benchmarks/embed.py (F0, 2,040 windows, Zen 4) the job took 67.4 CPU-s
    against 69.9, in about the same wall time. `--direct_num_workers N` alone gives N
    worker processes sharing the cores.
    """
    workers_given = flag_given(beam_args, "--direct_num_workers")
    return make_pipeline_options(
        beam_args, default_workers=1, default_mode="multi_processing" if workers_given else "in_memory"
    )


def run(argv: list[str] | EmbedSettings | None = None) -> launch.JobResult:
    """The embed job from its command line (or settings already validated)."""
    settings = argv if isinstance(argv, EmbedSettings) else EmbedSettings.from_argv(argv)
    options = embed_pipeline_options(list(settings.beam_args))
    inference = settings.model.for_workers(options)
    done = launch.to_directory(
        "embed",
        output_dir=settings.output,
        options=options,
        build=lambda pipeline, staging_dir: build_pipeline(pipeline, settings, output_dir=staging_dir, inference=inference),
        prefixes=OUTPUT_PREFIXES,
        settings=settings.record(),
    )
    text = summary(done.manifest, output_dir=settings.output, elapsed_s=done.seconds)
    return done.result("embed", kind=schema.EMBEDDINGS_PREFIX, text=text)


def summary(manifest: dict, *, output_dir: str, elapsed_s: float) -> str:
    """Counts from the commit: every input track is one row or one dead letter."""
    counts = manifest["counts"]
    rows, failed = counts.get(schema.EMBEDDINGS_PREFIX, 0), counts.get(ERRORS_PREFIX, 0)
    carried, windows = counts.get(CARRIED, 0), counts.get(WINDOWS_EMBEDDED, 0)
    run_id = manifest["run_id"]
    return "\n".join(
        [
            f"embed: {rows + failed} tracks read, {rows - carried} embedded, "
            f"{carried} unchanged (copied), {failed} failed; "
            f"{windows} windows in {elapsed_s:.1f} s ({windows / max(elapsed_s, 1e-9):.1f} windows/s); run {run_id}",
            f"  embeddings: {FileSystems.join(output_dir, schema.EMBEDDINGS_PREFIX)}-{run_id}-*-of-*.parquet "
            "(one row per track: track_id, uri, content_sha256, duration_s, n_windows, window_s, hop_s, "
            "embedding, model_id, feature_config_sha256, engine, precision, aggregate, max_windows, window_spec, created_at)",
            f"  errors: {FileSystems.join(output_dir, ERRORS_PREFIX)}-{run_id}-*-of-*.jsonl",
            f"  manifest: {FileSystems.join(output_dir, MANIFEST_NAME)} (the committed files; "
            "readers given the directory follow it)",
        ]
    )
