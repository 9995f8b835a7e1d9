"""The embed job's composite transforms: shard files → records → window chunks → model →
per-track merge → rows.

`EmbedTracks` is the model stage that the `embed` and `reembed` launchers share. Before
it, a track is a stream of TrackWindows chunks (at most 128 windows each) and, per track,
its end or a failure (TrackPartial): from shard segments (`PlaceWindows`) or from audio
(`EmbedAudioWindows` in musicrep.pipelines.features' streaming DoFn), so no stage holds
a whole long track. Damaged shards and records are dead letters. The launcher and the
job's wiring are in musicrep.pipelines.embed.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
from typing import TYPE_CHECKING, Iterable, Iterator

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference
from apache_beam.transforms.window import GlobalWindows

from musicrep import fileio
from musicrep.contracts.layout import METRICS_NAMESPACE
from musicrep.errors import RecordError, TooShortError
from musicrep.contracts.feature_config import FeatureConfig
from musicrep.contracts.shards import DamagedShardError, FeatureRecord, iterate_shard_records, parse_record
from musicrep.contracts.window_spec import WindowSpec
from musicrep.features.windows import OnlinePool, WindowChunk, WindowStream
from musicrep.pipelines.inference import EmbeddingModelHandler, TrackWindows
from musicrep.pipelines.settings import InferenceSpec
from musicrep.pipelines.features import StreamTrack, TrackInProgress
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
        try:
            record = parse_record(serialized)
        except Exception as error:  # a corrupt record is a dead letter, not a crash
            self._read.inc()
            self._failed.inc()
            yield beam.pvalue.TaggedOutput(
                "errors", error_record(track_id="", uri="", stage="parse", error=error)
            )
            return
        if record.frame_offset == 0:  # a track, not each of its segments
            self._read.inc()
        yield record


class SkipExisting(beam.DoFn):
    """Passes records that `existing` (track_id → content_sha256) does not cover."""

    def __init__(self):
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "tracks_skipped")

    def process(self, record: FeatureRecord, existing: dict[str, str]) -> Iterator:
        if existing.get(record.track_id) != record.content_sha256:
            yield record
        elif record.frame_offset == 0:
            self._skipped.inc()
            yield beam.pvalue.TaggedOutput("skipped", (record.track_id, record.uri))


@dataclasses.dataclass
class TrackPartial:
    """Part of one track's result, merged per track id after the model (any order):
    pooled windows of some chunks, the track's end (`final`: what the row needs beyond
    the pool), or a failure (a dead letter, which wins over everything else)."""

    pool: OnlinePool | None = None
    final: dict | None = None
    failure: dict | None = None
    engine: str | None = None  # the engine that embedded the pooled windows


    def merge(self, other: "TrackPartial") -> "TrackPartial":
        if self.pool is None:
            self.pool = other.pool
        elif other.pool is not None:
            self.pool.merge(other.pool)
        self.final = self.final or other.final
        # Workers of one run may differ (auto on mixed hardware): a fixed choice, and the
        # row says "a+b" so that it never claims one engine for windows of two.
        engines = sorted({e for engine in (self.engine, other.engine) if engine for e in engine.split("+")})
        self.engine = "+".join(engines) or None
        # The first failure in a fixed order, so a rerun reports the same one.
        failures = [f for f in (self.failure, other.failure) if f]
        self.failure = min(failures, key=lambda f: (f["stage"], f["message"])) if failures else None
        return self


def merge_partials(partials: Iterable[TrackPartial]) -> TrackPartial:
    return functools.reduce(TrackPartial.merge, partials, TrackPartial())


def failed(letter: dict) -> tuple[str, TrackPartial]:
    return letter["track_id"], TrackPartial(failure=letter)


def track_end(track, *, duration_s: float, n_windows: int, window_frames: int) -> beam.pvalue.TaggedOutput:
    """The "partials" output of a track's end: what its row needs beyond the pool.
    `track`: its track_id, uri, content_sha256 and feature_config_sha256."""
    final = {
        "uri": track.uri,
        "content_sha256": track.content_sha256,
        "duration_s": float(duration_s),
        "feature_config_sha256": track.feature_config_sha256,
        "n_windows": n_windows,
        "window_frames": window_frames,
    }
    return beam.pvalue.TaggedOutput("partials", (track.track_id, TrackPartial(final=final)))


class TrackWindower:
    """One track's log-mel blocks → TrackWindows chunks for the model, and at the end the
    track's "final" partial: windows placed and cut as window_starts/cut_windows do on
    the whole track (musicrep.features.windows.WindowStream), the first
    `windows.max_duration_s` seconds only."""

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec, track_id: str, uri: str, content_sha256: str):
        window_frames, hop_frames = windows.frames(metadata.features)
        self._stream = WindowStream(
            window_frames=window_frames,
            hop_frames=hop_frames,
            max_windows=windows.max_windows,
            min_frames=metadata.min_frames,
        )
        self._max_frames = windows.max_frames(metadata.features)
        self._fps = metadata.features.frames_per_second
        self._n_frames = 0
        self.track_id, self.uri, self.content_sha256 = track_id, uri, content_sha256
        self.feature_config_sha256 = metadata.feature_config_sha256

    def push(self, block: np.ndarray) -> Iterator[TrackWindows]:
        if self._max_frames is not None:
            block = block[: max(self._max_frames - self._n_frames, 0)]
        self._n_frames += block.shape[0]
        yield from self._chunks(self._stream.push(block))

    def finish(self, duration_s: float) -> Iterator:
        """The last chunks, then ("partials", (track_id, final partial)). Raises TooShortError."""
        yield from self._chunks(self._stream.finish())
        if self._max_frames is not None:
            duration_s = min(duration_s, self._n_frames / self._fps)
        yield track_end(self, duration_s=duration_s, n_windows=self._stream.n_windows, window_frames=self._stream.window_frames)

    def _chunks(self, chunks: list[WindowChunk]) -> Iterator[TrackWindows]:
        for chunk in chunks:
            yield TrackWindows(
                track_id=self.track_id,
                uri=self.uri,
                content_sha256=self.content_sha256,
                duration_s=(chunk.first_frame + chunk.log_mel.shape[0]) / self._fps,
                feature_config_sha256=self.feature_config_sha256,
                log_mel=chunk.log_mel,
                starts=chunk.starts,
                window_frames=chunk.window_frames,
                first_frame=chunk.first_frame,
            )


class PlaceWindows(beam.DoFn):
    """FeatureRecords (a long track's segments consecutive, as its shard holds them) →
    TrackWindows chunks, and per track ("partials") its end or a failure (wrong n_mels,
    other front end, too short for the network, segments out of place).

    Segments reach this DoFn in shard order: ReadShards → PlaceWindows are one fused
    stage (no shuffle between), and the features job writes a track's segments one after
    the other into one shard. A track still open at the end of a bundle is a failure.
    """

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec):
        windows.frames(metadata.features)  # refuses windows below one frame in the launcher
        self._metadata = metadata
        self._windows = windows
        self._failed = Metrics.counter(METRICS_NAMESPACE, "tracks_failed")

    def start_bundle(self) -> None:
        self._track: TrackWindower | None = None
        self._next_frame = 0

    def process(self, record: FeatureRecord) -> Iterator:
        try:
            if self._track is not None and (
                record.track_id != self._track.track_id or record.frame_offset != self._next_frame
            ):
                unfinished, self._track = self._track, None  # the record starts a track of its own
                yield from self._fail(unfinished.track_id, unfinished.uri, "segments", RecordError(
                    f"segments end at frame {self._next_frame} without the final one"
                ))
            if self._track is None:
                self._track = self._start(record)
            self._next_frame = record.frame_offset + record.n_frames
            yield from self._track.push(record.log_mel)
            if record.final:
                track, self._track = self._track, None
                yield from track.finish(record.duration_s)
        except RecordError as error:
            reason = "too_short" if isinstance(error, TooShortError) else "windows"
            if isinstance(error, _OutOfPlace):
                reason = "segments"
            self._track = None
            yield from self._fail(record.track_id, record.uri, reason, error)

    def finish_bundle(self) -> Iterator:
        if self._track is not None:
            error = RecordError(f"the shard ends at frame {self._next_frame} of the track, before its final segment")
            for output in self._fail(self._track.track_id, self._track.uri, "segments", error):
                yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
            self._track = None

    def _start(self, record: FeatureRecord) -> TrackWindower:
        expected = self._metadata
        if record.frame_offset != 0:
            raise _OutOfPlace(f"a segment at frame {record.frame_offset} without the segments before it")
        if record.n_mels != expected.n_mels:
            raise RecordError(f"record has {record.n_mels} mel bands, the model takes {expected.n_mels}")
        feature_sha = FeatureConfig.from_json(record.feature_config).sha256()
        if feature_sha != expected.feature_config_sha256:
            raise RecordError(
                f"features were made with config {feature_sha[:12]}, the model expects "
                f"{expected.feature_config_sha256[:12]}"
            )
        return TrackWindower(
            metadata=expected,
            windows=self._windows,
            track_id=record.track_id,
            uri=record.uri,
            content_sha256=record.content_sha256,
        )

    def _fail(self, track_id: str, uri: str, stage: str, error: BaseException) -> Iterator:
        self._failed.inc()
        letter = error_record(track_id=track_id, uri=uri, stage=stage, error=error)
        yield beam.pvalue.TaggedOutput("partials", failed(letter))


class EmbedAudioWindows(StreamTrack):
    """(track_id, uri) → TrackWindows chunks and the track's end or failure
    ("partials"), decoded and windowed as a stream (embed --audio, reembed)."""

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec, time_budget_s: float | None = None):
        windows.frames(metadata.features)  # refuses windows below one frame in the launcher
        super().__init__(metadata.features, time_budget_s=time_budget_s, max_samples=windows.max_samples(metadata.features))
        self._metadata = metadata
        self._windows = windows

    def on_block(self, track: TrackInProgress, block: np.ndarray) -> Iterator:
        if track.state is None:
            track.state = TrackWindower(
                metadata=self._metadata,
                windows=self._windows,
                track_id=track.track_id,
                uri=track.uri,
                content_sha256=track.content_sha256,
            )
        yield from track.state.push(block)

    def on_end(self, track: TrackInProgress) -> Iterator:
        yield from track.state.finish(track.duration_s)

    def on_failure(self, track: TrackInProgress, letter: dict) -> Iterator:
        yield beam.pvalue.TaggedOutput("partials", failed(letter))


class _OutOfPlace(RecordError):
    """A segment that does not continue the track before it."""


class ToPartials(beam.DoFn):
    """PredictionResult of a chunk → (track_id, its pooled windows) (main) and its
    window rows ("windows")."""

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec, per_window: bool):
        self._frames_per_second = metadata.features.frames_per_second
        self._aggregate = windows.aggregate
        self._per_window = per_window
        self._windows_embedded = Metrics.counter(METRICS_NAMESPACE, "windows_embedded")

    def process(self, result) -> Iterator:
        chunk: TrackWindows = result.example
        windows: np.ndarray = result.inference
        self._windows_embedded.inc(windows.shape[0])
        pool = OnlinePool(self._aggregate, windows.shape[1]).add(windows)
        yield chunk.track_id, TrackPartial(pool=pool, engine=result.model_id)
        if self._per_window:
            fps = self._frames_per_second
            for start, embedding in zip(chunk.starts, windows):
                row = {"track_id": chunk.track_id, "start_s": float(chunk.first_frame + start) / fps, "embedding": embedding}
                yield beam.pvalue.TaggedOutput("windows", row)


class ToRows(beam.DoFn):
    """(track_id, merged TrackPartial) → the track's Parquet row, or its dead letter
    ("errors") when any part failed.

    `window_s` and `hop_s` are what the track got on the frame grid (a track shorter than
    one window gets one window of its whole length); `window_spec` is the run's setting
    (WindowSpec.key), the same on every row of a run.
    """

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec, spec: InferenceSpec):
        self._model_id = metadata.model_id
        self._frames_per_second = metadata.features.frames_per_second
        self._windows = windows
        self._window_key = windows.key(metadata.features)
        self._hop_frames = windows.frames(metadata.features)[1]
        self._spec = spec
        # Not "tracks_written": in the fused job the features stage counts that one.
        self._embedded = Metrics.counter(METRICS_NAMESPACE, "tracks_embedded")

    def process(self, element: tuple[str, TrackPartial]) -> Iterator:
        track_id, partial = element
        final, pool = partial.final, partial.pool
        if partial.failure is None and (final is None or pool is None or pool.count != final["n_windows"]):
            # Cannot happen unless a runner lost elements; say so rather than write a wrong mean.
            found = pool.count if pool else 0
            partial.failure = error_record(
                track_id=track_id, uri=(final or {}).get("uri", ""), stage="inference",
                error=RecordError(f"{found} window embeddings came back, expected {(final or {}).get('n_windows')}"),
            )
        if partial.failure is not None:
            yield beam.pvalue.TaggedOutput("errors", partial.failure)
            return
        self._embedded.inc()
        yield {
            "track_id": track_id,
            "uri": final["uri"],
            "content_sha256": final["content_sha256"],
            "duration_s": final["duration_s"],
            "n_windows": int(pool.count),
            "window_s": final["window_frames"] / self._frames_per_second,
            "hop_s": self._hop_frames / self._frames_per_second,
            "embedding": pool.result(),
            "model_id": self._model_id,
            "feature_config_sha256": final["feature_config_sha256"],
            "engine": partial.engine or self._spec.engine,
            "precision": self._spec.precision,
            "aggregate": self._windows.aggregate,
            "max_windows": self._windows.max_windows,
            "window_spec": self._window_key,
            "created_at": datetime.datetime.now(datetime.timezone.utc),
        }


class EmbedTracks(beam.PTransform):
    """{"chunks": TrackWindows, "partials": (track_id, TrackPartial) of track ends and
    failures} → {"rows": Parquet rows, "windows": window rows (of tracks with a row only),
    "errors": dead letters}.

    Chunks go through the model; their pooled windows, the track ends and every failure
    are merged per track (a combine: a few floats per track), so a track of any length
    is one row or one dead letter. `metadata`: the export's sidecar (model id, front end,
    minimum frames); `windows`: how tracks become windows and one vector; `handler`: the
    ready-made RunInference handler (its InferenceSpec is recorded in the rows).
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

    def expand(self, inputs):
        predictions, dead = inputs["chunks"] | "RunInference" >> RunInference(self._handler).with_exception_handling()
        failed_chunks = dead.failed_inferences | "InferenceErrors" >> beam.FlatMap(_inference_errors)
        pooled = predictions | "PoolChunks" >> beam.ParDo(
            ToPartials(metadata=self._metadata, windows=self._windows, per_window=self._per_window)
        ).with_outputs("windows", main="partials")
        merged = (
            (pooled.partials, inputs["partials"], failed_chunks)
            | "AllPartials" >> beam.Flatten()
            | "MergePerTrack" >> beam.CombinePerKey(merge_partials)
        )
        rows = merged | "ToRows" >> beam.ParDo(
            ToRows(metadata=self._metadata, windows=self._windows, spec=self._handler.spec)
        ).with_outputs("errors", main="rows")
        windows = pooled.windows
        if self._per_window:
            # A track's windows leave the model before its failure may be known (a later
            # chunk, segment or decode error): keep only the windows of tracks with a row.
            windows = (
                {
                    "windows": pooled.windows | "KeyWindows" >> beam.Map(lambda row: (row["track_id"], row)),
                    "rows": rows.rows | "RowIds" >> beam.Map(lambda row: (row["track_id"], None)),
                }
                | "JoinWindowsToRows" >> beam.CoGroupByKey()
                | "WindowsOfRows" >> beam.FlatMap(_windows_of_written_track)
            )
        return {"rows": rows.rows, "windows": windows, "errors": rows.errors}


def _windows_of_written_track(joined: tuple[str, dict]) -> Iterable[dict]:
    _, groups = joined
    return groups["windows"] if groups["rows"] else ()


def _inference_errors(failure: tuple[list[TrackWindows], tuple]) -> Iterator[tuple[str, TrackPartial]]:
    # A failed model call fails its whole batch of chunks: each track gets a failure.
    # Beam's dead-letter element is (batch, (exception type, repr, traceback lines)).
    chunks, (error_type, message, _) = failure
    for chunk in chunks:
        record = error_record(track_id=chunk.track_id, uri=chunk.uri, stage="inference", error=error_type.__name__)
        yield failed({**record, "message": message[:_MESSAGE_CHARS]})
