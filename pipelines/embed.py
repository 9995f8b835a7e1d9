"""The `embed` job: log-mel shards (or raw audio) → one embedding per track in Parquet.

    musicrep embed --features 'gs://b/features/*.tfrecord.gz' --model gs://b/models/f0 --output gs://b/emb
    musicrep embed --audio 'gs://b/catalog/**/*.mp3' --model ... --output ...   # fused, no shards

Windows follow SPEC §4 (3 s at 0.5 Hz by default, see musicrep.features.windows); each
track's window embeddings are averaged into DIR/embeddings-SSSSS-of-NNNNN.parquet
(schema: musicrep.pipelines.schema). Inputs that cannot be embedded go to
DIR/errors-SSSSS-of-NNNNN.jsonl with the stage and reason.

--skip-existing PATTERN reads earlier embeddings; a track whose (track_id,
content_sha256, model_id, feature_config_sha256) is already there is not recomputed and
its earlier row is copied to the output, so the output is always the complete set for
the input catalog (new, changed and unchanged tracks), ready to replace the old one.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import time
from typing import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from musicrep.errors import ConfigError, TooShortError
from musicrep.features.config import FeatureConfig
from musicrep.features.shards import FeatureRecord, parse_record
from musicrep.features.windows import window_starts
from musicrep.pipelines import schema
from musicrep.pipelines.features import ExtractLogMel, ListTracks, check_source
from musicrep.pipelines.inference import EmbeddingModelHandler, TrackWindows
from musicrep.pipelines.options import METRICS_NAMESPACE, counter_values, make_pipeline_options, threads_per_worker
from musicrep.pipelines.outputs import (
    ERRORS_PREFIX,
    SHARD_TEMPLATE,
    ReplaceStaleOutputs,
    WriteDeadLetters,
    error_record,
)

logger = logging.getLogger(__name__)

FRAMES_PER_SECOND = 100


class ParseShardRecord(beam.DoFn):
    """Serialized Example → FeatureRecord, or a dead letter (unreadable record)."""

    def __init__(self):
        self._read = Metrics.counter(METRICS_NAMESPACE, "tracks_read")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "tracks_failed")

    def process(self, serialized: bytes) -> Iterator:
        self._read.inc()
        try:
            yield parse_record(serialized)
        except Exception as error:  # a corrupt record is a dead letter, not a crash
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                "errors", error_record(track_id="", uri="", stage="parse", error=error)
            )


class SkipExisting(beam.DoFn):
    """Passes records that `existing` (track_id → content_sha256) does not cover."""

    def __init__(self):
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "tracks_skipped")

    def process(self, record: FeatureRecord, existing: dict[str, str]) -> Iterator:
        if existing.get(record.track_id) == record.content_sha256:
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput("skipped", (record.track_id, record.uri))
        else:
            yield record


class PlaceWindows(beam.DoFn):
    """FeatureRecord → TrackWindows, or a dead letter (wrong n_mels, other front end,
    too short for the network)."""

    def __init__(self, *, window_frames: int, hop_frames: int, max_windows: int | None, model_uri: str):
        self._window_frames = window_frames
        self._hop_frames = hop_frames
        self._max_windows = max_windows
        self._model_uri = model_uri
        self._failed = Metrics.counter(METRICS_NAMESPACE, "tracks_failed")

    def setup(self) -> None:
        from musicrep.model.export import read_metadata

        metadata = read_metadata(self._model_uri)
        self._n_mels = metadata.n_mels
        self._min_frames = metadata.min_frames
        self._feature_config_sha256 = metadata.feature_config_sha256

    def process(self, record: FeatureRecord) -> Iterator:
        stage = "windows"
        try:
            if record.n_mels != self._n_mels:
                raise ConfigError(f"record has {record.n_mels} mel bands, the model takes {self._n_mels}")
            feature_sha = FeatureConfig.from_json(record.feature_config).sha256()
            if feature_sha != self._feature_config_sha256:
                raise ConfigError(
                    f"features were made with config {feature_sha[:12]}, the model expects "
                    f"{self._feature_config_sha256[:12]}"
                )
            starts, length = window_starts(
                record.n_frames,
                window_frames=self._window_frames,
                hop_frames=self._hop_frames,
                max_windows=self._max_windows,
                min_frames=self._min_frames,
            )
        except (ConfigError, TooShortError) as error:
            self._failed.inc()
            reason = "too_short" if isinstance(error, TooShortError) else stage
            yield beam.pvalue.TaggedOutput(
                "errors", error_record(track_id=record.track_id, uri=record.uri, stage=reason, error=error)
            )
            return
        yield TrackWindows(
            track_id=record.track_id,
            uri=record.uri,
            content_sha256=record.content_sha256,
            duration_s=record.duration_s,
            feature_config_sha256=feature_sha,
            log_mel=record.log_mel,
            starts=starts,
            window_frames=length,
        )


class ToRows(beam.DoFn):
    """PredictionResult → the track's Parquet row (main) and its window rows ("windows")."""

    def __init__(self, *, model_id: str, window_s: float, hop_s: float, aggregate: str, per_window: bool):
        self._model_id = model_id
        self._window_s = window_s
        self._hop_s = hop_s
        self._aggregate = aggregate
        self._per_window = per_window
        # Not "tracks_written": in the fused job the features stage counts that one.
        self._embedded = Metrics.counter(METRICS_NAMESPACE, "tracks_embedded")
        self._windows = Metrics.counter(METRICS_NAMESPACE, "windows_embedded")

    def process(self, result) -> Iterator:
        track: TrackWindows = result.example
        windows: np.ndarray = result.inference
        self._embedded.inc()
        self._windows.inc(windows.shape[0])
        pooled = windows.mean(axis=0) if self._aggregate == "mean" else windows.max(axis=0)
        yield {
            "track_id": track.track_id,
            "uri": track.uri,
            "content_sha256": track.content_sha256,
            "duration_s": float(track.duration_s),
            "n_windows": int(windows.shape[0]),
            "window_s": self._window_s,
            "hop_s": self._hop_s,
            "embedding": pooled.astype(np.float32),
            "model_id": self._model_id,
            "feature_config_sha256": track.feature_config_sha256,
            "created_at": datetime.datetime.now(datetime.timezone.utc),
        }
        if self._per_window:
            for start, embedding in zip(track.starts, windows):
                row = {"track_id": track.track_id, "start_s": float(start) / FRAMES_PER_SECOND, "embedding": embedding}
                yield beam.pvalue.TaggedOutput("windows", row)


class EmbedTracks(beam.PTransform):
    """FeatureRecords → {"rows": Parquet rows, "windows": window rows, "errors": dead letters}."""

    def __init__(
        self,
        *,
        model_uri: str,
        model_id: str,
        window_s: float = 3.0,
        hop_s: float = 2.0,
        max_windows: int | None = None,
        aggregate: str = "mean",
        batch_size: int = 32,
        per_window: bool = False,
        large_model: bool = False,
        model_copies: int | None = None,
        cpu_threads: int | None = None,
    ):
        super().__init__()
        self._model_uri = model_uri
        self._model_id = model_id
        self._window_s, self._hop_s = window_s, hop_s
        self._max_windows = max_windows
        self._aggregate = aggregate
        self._batch_size = batch_size
        self._per_window = per_window
        self._large_model = large_model
        self._model_copies = model_copies
        self._cpu_threads = cpu_threads

    def expand(self, records):
        placed = records | "PlaceWindows" >> beam.ParDo(
            PlaceWindows(
                window_frames=int(round(self._window_s * FRAMES_PER_SECOND)),
                hop_frames=int(round(self._hop_s * FRAMES_PER_SECOND)),
                max_windows=self._max_windows,
                model_uri=self._model_uri,
            )
        ).with_outputs("errors", main="tracks")
        handler = EmbeddingModelHandler(
            self._model_uri,
            batch_size=self._batch_size,
            large_model=self._large_model,
            model_copies=self._model_copies,
            cpu_threads=self._cpu_threads,
        )
        predictions, dead = placed.tracks | "RunInference" >> RunInference(handler).with_exception_handling()
        failed = dead.failed_inferences | "InferenceErrors" >> beam.FlatMap(_inference_errors)
        rows = predictions | "ToRows" >> beam.ParDo(
            ToRows(
                model_id=self._model_id,
                window_s=self._window_s,
                hop_s=self._hop_s,
                aggregate=self._aggregate,
                per_window=self._per_window,
            )
        ).with_outputs("windows", main="rows")
        errors = (placed.errors, failed) | "EmbedErrors" >> beam.Flatten()
        return {"rows": rows.rows, "windows": rows.windows, "errors": errors}


def _inference_errors(failure: tuple[list[TrackWindows], Exception]) -> Iterator[dict]:
    # A failed model call fails its whole batch of tracks: each gets its own dead letter.
    tracks, error = failure
    for track in tracks:
        Metrics.counter(METRICS_NAMESPACE, "tracks_failed").inc()
        yield error_record(track_id=track.track_id, uri=track.uri, stage="inference", error=error)


def build_pipeline(
    pipeline: beam.Pipeline,
    *,
    model_uri: str,
    output_dir: str,
    features: str | None = None,
    audio: str | None = None,
    skip_existing: str | None = None,
    num_shards: int = 0,
    **embed_options,
) -> None:
    """The embed job: shards (or audio → log-mel) → windows → RunInference → Parquet."""
    from musicrep.model.export import read_metadata

    metadata = read_metadata(model_uri)
    existing_rows = existing_keys = None
    if skip_existing:
        existing_rows = (
            pipeline
            | "ReadExisting" >> beam.io.ReadFromParquet(skip_existing)
            | "SameModelAndFeatures" >> beam.Filter(_made_by, metadata.model_id)
            | "KeyExisting" >> beam.Map(lambda row: (row["track_id"], row))
        )
        existing_keys = existing_rows | "ExistingHashes" >> beam.Map(lambda kv: (kv[0], kv[1]["content_sha256"]))

    if audio is not None:
        extracted = (
            pipeline
            | "ListTracks" >> ListTracks(audio)
            | "ExtractLogMel" >> ExtractLogMel(metadata.features, existing=existing_keys)
        )
        records, input_errors, skipped = extracted["features"], extracted["errors"], extracted["skipped"]
    else:
        parsed = (
            pipeline
            | "ReadShards" >> beam.io.ReadFromTFRecord(features, compression_type=CompressionTypes.GZIP)
            | "ParseRecords" >> beam.ParDo(ParseShardRecord()).with_outputs("errors", main="records")
        )
        records, input_errors, skipped = parsed.records, parsed.errors, None
        if existing_keys is not None:
            kept = records | "SkipExisting" >> beam.ParDo(
                SkipExisting(), existing=beam.pvalue.AsDict(existing_keys)
            ).with_outputs("skipped", main="records")
            records, skipped = kept.records, kept.skipped

    embedded = records | "EmbedTracks" >> EmbedTracks(
        model_uri=model_uri, model_id=metadata.model_id, **embed_options
    )
    rows = embedded["rows"]
    if existing_rows is not None:
        carried = (
            {"skipped": skipped, "existing": existing_rows}
            | "JoinSkipped" >> beam.CoGroupByKey()
            | "CarryExistingRows" >> beam.FlatMap(_carried_row)
        )
        rows = (rows, carried) | "AllRows" >> beam.Flatten()

    size = metadata.embedding_size
    written = [
        rows | "WriteEmbeddings" >> _write_parquet(output_dir, schema.EMBEDDINGS_PREFIX, schema.embedding_schema(size), num_shards),
        (input_errors, embedded["errors"]) | "AllErrors" >> beam.Flatten() | "WriteErrors" >> WriteDeadLetters(output_dir),
    ]
    prefixes = [schema.EMBEDDINGS_PREFIX, ERRORS_PREFIX]
    if embed_options.get("per_window"):
        prefixes.append(schema.WINDOWS_PREFIX)
        written.append(
            embedded["windows"]
            | "WriteWindows" >> _write_parquet(output_dir, schema.WINDOWS_PREFIX, schema.window_schema(size), 0)
        )
    _ = tuple(written) | "ReplaceStaleOutputs" >> ReplaceStaleOutputs(output_dir, tuple(prefixes))


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


def _made_by(row: dict, model_id: str) -> bool:
    # The feature config is implied: an export fixes the front end it was trained with,
    # and PlaceWindows refuses records made with another.
    return row["model_id"] == model_id


def _carried_row(joined: tuple[str, dict]) -> Iterator[dict]:
    _, groups = joined
    if groups["skipped"] and groups["existing"]:
        row = dict(groups["existing"][0])
        row["embedding"] = np.asarray(row["embedding"], np.float32)
        yield row


def embed_pipeline_options(beam_args: list[str]):
    """Pipeline options of the jobs that run the model (embed, reembed).

    On the embedded runner one process runs the model on every core (TensorFlow's own
    thread pools): measured on 2 cores, F0 ran at 13.5 windows/s with one worker process
    and 8.6 with two.
    """
    return make_pipeline_options(beam_args, default_workers=1)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="musicrep embed",
        description="Embed every track with an SF-NFNet export: windows (SPEC §4) → model → "
        "per-track average → Parquet. Options not listed here go to Beam.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--features", help="glob of feature shards written by `musicrep features`")
    source.add_argument(
        "--audio", help="glob of audio files or a track_id,uri manifest: decode + log-mel in the same job"
    )
    parser.add_argument("--model", required=True, help="model export directory (local or gs://)")
    parser.add_argument("--output", required=True, help="output directory (local or gs://)")
    parser.add_argument("--window-s", type=float, default=3.0, help="window length in seconds (default 3)")
    parser.add_argument("--hop-s", type=float, default=2.0, help="hop between window centres (default 2 s = 0.5 Hz)")
    parser.add_argument("--max-windows", type=int, default=None, help="embed at most this many windows per track")
    parser.add_argument("--aggregate", choices=("mean", "max"), default="mean", help="window pooling (default mean)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per model call (default 32)")
    parser.add_argument("--per-window", action="store_true", help="also write DIR/windows-*.parquet")
    parser.add_argument("--shards", type=int, default=0, help="embedding Parquet files (default: the runner decides)")
    parser.add_argument(
        "--skip-existing",
        metavar="PARQUET_PATTERN",
        help="earlier embeddings: unchanged tracks are copied from them instead of recomputed",
    )
    parser.add_argument(
        "--large-model", action="store_true", help="one model per machine shared by its worker processes (GPU workers)"
    )
    parser.add_argument("--model-copies", type=int, default=None, help="with --large-model: copies per machine")
    return parser.parse_known_args(argv)


def run(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    if args.window_s <= 0 or args.hop_s <= 0 or args.batch_size < 1:
        raise ConfigError(
            f"need --window-s > 0, --hop-s > 0, --batch-size >= 1; got {args.window_s}, {args.hop_s}, {args.batch_size}"
        )
    if args.audio:
        check_source(args.audio)
    elif not FileSystems.match([args.features])[0].metadata_list:
        raise ConfigError(f"no feature shards match {args.features!r}")
    started = time.perf_counter()
    options = embed_pipeline_options(beam_args)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(
        pipeline,
        model_uri=args.model,
        output_dir=args.output,
        features=args.features,
        audio=args.audio,
        skip_existing=args.skip_existing,
        num_shards=args.shards,
        window_s=args.window_s,
        hop_s=args.hop_s,
        max_windows=args.max_windows,
        aggregate=args.aggregate,
        batch_size=args.batch_size,
        per_window=args.per_window,
        large_model=args.large_model,
        model_copies=args.model_copies,
        cpu_threads=threads_per_worker(options),
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = counter_values(result)
    print(summary(counters, output_dir=args.output, elapsed_s=time.perf_counter() - started))
    return 0


def summary(counters: dict[str, int], *, output_dir: str, elapsed_s: float) -> str:
    get = counters.get
    windows = get("windows_embedded", 0)
    return "\n".join(
        [
            f"embed: {get('tracks_read', 0)} tracks read, {get('tracks_embedded', 0)} embedded, "
            f"{get('tracks_skipped', 0)} unchanged (copied), {get('tracks_failed', 0)} failed; "
            f"{windows} windows in {elapsed_s:.1f} s ({windows / max(elapsed_s, 1e-9):.1f} windows/s)",
            f"  embeddings: {FileSystems.join(output_dir, schema.EMBEDDINGS_PREFIX)}-*-of-*.parquet "
            "(one row per track: track_id, uri, content_sha256, duration_s, n_windows, window_s, hop_s, "
            "embedding, model_id, feature_config_sha256, created_at)",
            f"  errors: {FileSystems.join(output_dir, ERRORS_PREFIX)}-*-of-*.jsonl",
        ]
    )
