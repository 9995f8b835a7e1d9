"""The embed job's composite transforms: shard files → records → windows → model → rows.

`EmbedTracks` is the model stage that the `embed` and `reembed` launchers share; the
readers before it turn shard files into FeatureRecords, with damaged shards and records as
dead letters. The launcher and the job's wiring are in musicrep.pipelines.embed.
"""
from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from musicrep import fileio
from musicrep.errors import RecordError, TooShortError
from musicrep.features.config import FeatureConfig
from musicrep.features.shards import DamagedShardError, FeatureRecord, iterate_shard_records, parse_record
from musicrep.features.windows import WindowSpec, window_starts
from musicrep.pipelines.inference import EmbeddingModelHandler, InferenceSpec, TrackWindows
from musicrep.pipelines.options import METRICS_NAMESPACE
from musicrep.pipelines.outputs import error_record

if TYPE_CHECKING:
    from musicrep.model.export import ExportMetadata

_MESSAGE_CHARS = 500


class ReadShardFile(beam.DoFn):
    """Shard path → its serialized records; a shard that cannot be read to the end gives
    the records before the damage and one dead letter (stage "read_shard")."""

    def __init__(self):
        self._damaged = Metrics.counter(METRICS_NAMESPACE, "shards_damaged")

    def process(self, path: str) -> Iterator:
        try:
            with fileio.open_read(path) as handle:
                yield from iterate_shard_records(handle)
        except (DamagedShardError, OSError) as error:
            self._damaged.inc()
            yield beam.pvalue.TaggedOutput("errors", error_record(track_id="", uri=path, stage="read_shard", error=error))


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

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec):
        self._metadata = metadata
        self._window_frames, self._hop_frames = windows.frames(metadata.features)
        self._max_windows = windows.max_windows
        self._failed = Metrics.counter(METRICS_NAMESPACE, "tracks_failed")

    def process(self, record: FeatureRecord) -> Iterator:
        expected = self._metadata
        try:
            if record.n_mels != expected.n_mels:
                raise RecordError(f"record has {record.n_mels} mel bands, the model takes {expected.n_mels}")
            feature_sha = FeatureConfig.from_json(record.feature_config).sha256()
            if feature_sha != expected.feature_config_sha256:
                raise RecordError(
                    f"features were made with config {feature_sha[:12]}, the model expects "
                    f"{expected.feature_config_sha256[:12]}"
                )
            starts, length = window_starts(
                record.n_frames,
                window_frames=self._window_frames,
                hop_frames=self._hop_frames,
                max_windows=self._max_windows,
                min_frames=expected.min_frames,
            )
        except RecordError as error:
            self._failed.inc()
            reason = "too_short" if isinstance(error, TooShortError) else "windows"
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
    """PredictionResult → the track's Parquet row (main) and its window rows ("windows").

    `window_s` and `hop_s` are what the track got on the frame grid (a track shorter than
    one window gets one window of its whole length); `window_spec` is the run's setting
    (WindowSpec.key), the same on every row of a run.
    """

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec, spec: InferenceSpec, per_window: bool):
        self._model_id = metadata.model_id
        self._frames_per_second = metadata.features.frames_per_second
        self._windows = windows
        self._window_key = windows.key(metadata.features)
        self._hop_frames = windows.frames(metadata.features)[1]
        self._spec = spec
        self._per_window = per_window
        # Not "tracks_written": in the fused job the features stage counts that one.
        self._embedded = Metrics.counter(METRICS_NAMESPACE, "tracks_embedded")
        self._windows_embedded = Metrics.counter(METRICS_NAMESPACE, "windows_embedded")

    def process(self, result) -> Iterator:
        track: TrackWindows = result.example
        windows: np.ndarray = result.inference
        self._embedded.inc()
        self._windows_embedded.inc(windows.shape[0])
        fps = self._frames_per_second
        yield {
            "track_id": track.track_id,
            "uri": track.uri,
            "content_sha256": track.content_sha256,
            "duration_s": float(track.duration_s),
            "n_windows": int(windows.shape[0]),
            "window_s": track.window_frames / fps,
            "hop_s": self._hop_frames / fps,
            "embedding": self._windows.pool(windows),
            "model_id": self._model_id,
            "feature_config_sha256": track.feature_config_sha256,
            "engine": self._spec.engine,
            "precision": self._spec.precision,
            "aggregate": self._windows.aggregate,
            "max_windows": self._windows.max_windows,
            "window_spec": self._window_key,
            "created_at": datetime.datetime.now(datetime.timezone.utc),
        }
        if self._per_window:
            for start, embedding in zip(track.starts, windows):
                row = {"track_id": track.track_id, "start_s": float(start) / fps, "embedding": embedding}
                yield beam.pvalue.TaggedOutput("windows", row)


class EmbedTracks(beam.PTransform):
    """FeatureRecords → {"rows": Parquet rows, "windows": window rows, "errors": dead letters}.

    `metadata`: the export's sidecar (model id, front end, minimum frames); `windows`: how
    tracks become windows and one vector; `handler`: the ready-made RunInference handler
    (its InferenceSpec is recorded in the rows).
    """

    def __init__(
        self,
        *,
        metadata: ExportMetadata,
        windows: WindowSpec,
        handler: EmbeddingModelHandler,
        per_window: bool = False,
    ):
        super().__init__()
        self._metadata = metadata
        self._windows = windows
        self._handler = handler
        self._per_window = per_window

    def expand(self, records):
        placed = records | "PlaceWindows" >> beam.ParDo(
            PlaceWindows(metadata=self._metadata, windows=self._windows)
        ).with_outputs("errors", main="tracks")
        predictions, dead = placed.tracks | "RunInference" >> RunInference(self._handler).with_exception_handling()
        failed = dead.failed_inferences | "InferenceErrors" >> beam.FlatMap(_inference_errors)
        rows = predictions | "ToRows" >> beam.ParDo(
            ToRows(metadata=self._metadata, windows=self._windows, spec=self._handler.spec, per_window=self._per_window)
        ).with_outputs("windows", main="rows")
        errors = (placed.errors, failed) | "EmbedErrors" >> beam.Flatten()
        return {"rows": rows.rows, "windows": rows.windows, "errors": errors}


def _inference_errors(failure: tuple[list[TrackWindows], tuple]) -> Iterator[dict]:
    # A failed model call fails its whole batch of tracks: each gets its own dead letter.
    # Beam's dead-letter element is (batch, (exception type, repr, traceback lines)).
    tracks, (error_type, message, _) = failure
    for track in tracks:
        Metrics.counter(METRICS_NAMESPACE, "tracks_failed").inc()
        record = error_record(track_id=track.track_id, uri=track.uri, stage="inference", error=error_type.__name__)
        yield {**record, "message": message[:_MESSAGE_CHARS]}
