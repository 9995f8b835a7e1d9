"""The `features` job: a catalog of audio files → log-mel TFRecord shards.

    musicrep features --input 'gs://bucket/catalog/**/*.mp3' --output gs://bucket/features
    musicrep features --input manifest.csv --output /data/features --shards 64

Every input ends in exactly one of two outputs: a `tf.train.Example` in
DIR/features-RUN_ID-SSSSS-of-NNNNN.tfrecord.gz (schema: musicrep.contracts.shards), or a
line in DIR/errors-RUN_ID-SSSSS-of-NNNNN.jsonl saying which stage failed and why.
DIR/_MANIFEST.json lists the files of the last committed run (musicrep.pipelines.commit).
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import logging
import os
import time
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from musicrep.errors import ConfigError, TooShortError, TrackTimeoutError
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.contracts.shards import (
    DEFAULT_GZIP_LEVEL,
    SHARD_KIND,
    SHARD_SUFFIX,
    FeatureRecord,
    gzip_writer,
    serialize_record,
    write_shard_record,
)
from musicrep.features import front_end_process
from musicrep.features.segments import SEGMENT_FRAMES, Segmenter, SegmentSpill
from musicrep.contracts.layout import ERRORS_PREFIX, METRICS_NAMESPACE, SHARD_TEMPLATE
from musicrep.contracts.tracks import glob_prefix, is_manifest, track_id_for
from musicrep.manifest import MANIFEST_NAME
from musicrep.pipelines import commit, launch
from musicrep.pipelines.options import counter_values, make_pipeline_options
from musicrep.pipelines.outputs import WriteDeadLetters, error_record
from musicrep.pipelines.settings import FeaturesSettings

logger = logging.getLogger(__name__)

SHARD_PREFIX = SHARD_KIND
OUTPUT_PREFIXES = (SHARD_PREFIX, ERRORS_PREFIX)
_PROGRESS_EVERY_S = 10.0


class ListTracks(beam.PTransform):
    """A glob or a manifest (CSV/Parquet with track_id, uri) → (track_id, uri) pairs."""

    def __init__(self, source: str):
        super().__init__()
        self._source = source

    def expand(self, pbegin):
        if is_manifest(self._source):
            if self._source.lower().endswith(".parquet"):
                rows = pbegin | "ReadManifest" >> beam.io.ReadFromParquet(self._source, columns=["track_id", "uri"])
                return rows | "ManifestPairs" >> beam.Map(lambda row: (str(row["track_id"]), str(row["uri"])))
            columns = _csv_columns(self._source)
            return (
                pbegin
                | "ReadManifest" >> beam.io.ReadFromText(self._source, skip_header_lines=1)
                | "ManifestPairs" >> beam.FlatMap(_manifest_pair, columns)
            )
        prefix = glob_prefix(self._source)
        return (
            pbegin
            | "Pattern" >> beam.Create([self._source])
            | "Match" >> beam.ParDo(MatchPaths())
            | "GlobPairs" >> beam.Map(lambda path: (track_id_for(path, prefix), path))
        )


def _csv_columns(path: str) -> tuple[int, int]:
    """Positions of track_id and uri in a CSV manifest's header (read in the launcher, so
    workers can parse lines on their own; a row must fit on one line)."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        header = next(csv.reader([handle.readline().decode("utf-8-sig")]), [])
    names = [name.strip() for name in header]
    missing = {"track_id", "uri"} - set(names)
    if missing:
        raise ConfigError(f"manifest {path!r} lacks column(s) {sorted(missing)}; header is {names}")
    return names.index("track_id"), names.index("uri")


def _manifest_pair(line: str, columns: tuple[int, int]) -> Iterator[tuple[str, str]]:
    if line.strip():
        row = next(csv.reader([line]))
        yield row[columns[0]].strip(), row[columns[1]].strip()


class MatchPaths(beam.DoFn):
    """Every path a glob names. On local disks Beam's matcher drops broken links and
    directories without a word; we keep broken links, and directories named like files
    (`song.mp3/`), so they reach the dead letters with a reason. Directories without an
    extension are the folders a `**` walks through, not inputs."""

    def process(self, pattern: str) -> Iterator[str]:
        if FileSystems.get_scheme(pattern) is None:
            for path in sorted(glob.glob(pattern, recursive=True)):
                if not os.path.isdir(path) or os.path.splitext(path.rstrip("/"))[1]:
                    yield path
        else:
            for metadata in FileSystems.match([pattern])[0].metadata_list:
                yield metadata.path


class KeepOneUriPerTrack(beam.DoFn):
    """Two inputs with one track id would overwrite each other downstream: keep the first
    URI in sorted order and dead-letter the others, so each input is accounted for."""

    def process(self, element: tuple[str, Iterable[str]]) -> Iterator:
        track_id, uris = element
        kept, *duplicates = sorted(uris)
        yield track_id, kept
        for uri in duplicates:
            message = f"track_id {track_id!r} also names {kept!r}, which was kept"
            record = error_record(track_id=track_id, uri=uri, stage="list", error="DuplicateTrackId")
            yield beam.pvalue.TaggedOutput("errors", {**record, "message": message})


class StreamTrack(beam.DoFn):
    """(track_id, uri) → the track's log-mel as a stream of blocks, handed to the
    subclass (`on_block`, `on_end`, `on_failure`), so no stage holds the whole track.

    Each track is read and decoded in the worker's child process
    (musicrep.features.front_end_process): a hang or a crash in FFmpeg is that track's
    dead letter and the worker moves on. `front_end` says what the child gives: log-mel
    blocks, or (the device front end) decoded audio.

    With `existing` (track_id → content_sha256 of tracks already embedded with the same
    model and features), a track whose bytes hash to the known value is not decoded:
    it goes to the "skipped" output as (track_id, uri). `time_budget_s` bounds the time
    one track may take (a dead letter `timeout`); `max_samples` the waveform decoded.
    """

    front_end = front_end_process.LOG_MEL

    def __init__(self, config: FeatureConfig, *, time_budget_s: float | None = None, max_samples: int | None = None):
        self._config = config
        self._time_budget_s = time_budget_s
        self._max_samples = max_samples
        self._read = Metrics.counter(METRICS_NAMESPACE, "tracks_read")
        self._written = Metrics.counter(METRICS_NAMESPACE, "tracks_written")
        self._failed = Metrics.counter(METRICS_NAMESPACE, "tracks_failed")
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "tracks_skipped")
        self._audio_seconds = Metrics.counter(METRICS_NAMESPACE, "audio_seconds")
        self._track_ms = Metrics.distribution(METRICS_NAMESPACE, "track_processing_ms")

    def setup(self) -> None:
        self._decoder = front_end_process.FrontEndProcess()
        self._decoder.start()
        self._done = 0
        self._last_progress = time.monotonic()

    def teardown(self) -> None:
        self._decoder.close()

    def process(self, element: tuple[str, str], existing: dict[str, str] | None = None) -> Iterator:
        track_id, uri = element
        commit.pause_at(f"track:{track_id}")
        started = time.perf_counter()
        self._read.inc()
        track = TrackInProgress(track_id=track_id, uri=uri)
        request = front_end_process.Request(
            uri=uri, mode=self.front_end, config=self._config, max_samples=self._max_samples,
            skip_sha256=(existing or {}).get(track_id),
        )
        stage = "read"
        try:
            with self._decoder.track(request, budget_s=self._time_budget_s) as blocks:
                track.content_sha256 = blocks.content_sha256()
                if track.content_sha256 == request.skip_sha256:
                    self._skipped.inc()
                    yield beam.pvalue.TaggedOutput("skipped", (track_id, uri))
                    return
                stage = "decode"
                for block in blocks:
                    yield from self.on_block(track, block)
            track.duration_s = blocks.duration_s
            yield from self.on_end(track)
        except Exception as error:  # every failure becomes a dead letter, never a crash
            self._failed.inc()
            letter = error_record(track_id=track_id, uri=uri, stage=failure_stage(error, stage), error=error)
            yield from self.on_failure(track, letter)
        else:
            self._written.inc()
            self._audio_seconds.inc(int(round(track.duration_s)))
        self._track_ms.update(int((time.perf_counter() - started) * 1000))
        self._report_progress()

    def on_block(self, track: "TrackInProgress", block) -> Iterator:
        raise NotImplementedError

    def on_end(self, track: "TrackInProgress") -> Iterator:
        raise NotImplementedError

    def on_failure(self, track: "TrackInProgress", letter: dict) -> Iterator:
        raise NotImplementedError

    def _report_progress(self) -> None:
        self._done += 1
        now = time.monotonic()
        if now - self._last_progress >= _PROGRESS_EVERY_S:
            logger.info("%s: %d tracks processed by this worker", type(self).__name__, self._done)
            self._last_progress = now


@dataclasses.dataclass
class TrackInProgress:
    """What a StreamTrack knows of the track it is on; `state`: the subclass's."""

    track_id: str
    uri: str
    content_sha256: str = ""
    duration_s: float = 0.0
    state: Any = None


def failure_stage(error: BaseException, stage: str) -> str:
    """The dead letter's stage: what failed, or where the track was when it did."""
    if isinstance(error, TrackTimeoutError):
        return "timeout"
    if isinstance(error, TooShortError):
        return "too_short"
    if stage == "decode" and isinstance(error, ConfigError):
        return "log_mel"
    return stage


class ComputeLogMel(StreamTrack):
    """(track_id, uri) → FeatureRecords (segments of SEGMENT_FRAMES, see
    musicrep.contracts.shards), or a dead letter naming the stage.

    A track's records go out only once it has decoded to its end, so a track that fails
    hours in (a timeout, a decode error) is one dead letter, as a short one is. Until
    then the segments of a long track wait in a local spill file (SegmentSpill), not in
    memory.
    """

    def __init__(self, config: FeatureConfig, *, time_budget_s: float | None = None, segment_frames: int = SEGMENT_FRAMES):
        super().__init__(config, time_budget_s=time_budget_s)
        self._segment_frames = segment_frames

    def on_block(self, track: TrackInProgress, block) -> Iterator:
        if track.state is None:
            track.state = (Segmenter(self._segment_frames), SegmentSpill())
        segmenter, spill = track.state
        for offset, frames in segmenter.push(block):
            spill.add(offset, frames)
        return iter(())

    def on_end(self, track: TrackInProgress) -> Iterator:
        segmenter, spill = track.state
        with spill:
            for offset, frames in spill:
                yield self._record(track, offset, frames, final=False)
        offset, frames = segmenter.finish()
        yield self._record(track, offset, frames, final=True)

    def on_failure(self, track: TrackInProgress, letter: dict) -> Iterator:
        if track.state is not None:
            track.state[1].close()
        yield beam.pvalue.TaggedOutput("errors", letter)

    def _record(self, track: TrackInProgress, offset: int, frames, *, final: bool) -> FeatureRecord:
        return FeatureRecord(
            track_id=track.track_id,
            uri=track.uri,
            content_sha256=track.content_sha256,
            sample_rate=self._config.sample_rate_hz,
            duration_s=track.duration_s if final else (offset + frames.shape[0]) / self._config.frames_per_second,
            log_mel=frames,
            feature_config=self._config.to_json(),
            feature_version=self._config.version,
            frame_offset=offset,
            final=final,
        )


class ExtractLogMel(beam.PTransform):
    """(track_id, uri) pairs → {"features": FeatureRecords (a long track's segments in
    order), "errors": dead letters, "skipped": (track_id, uri) of tracks `existing`
    already covers, "partials": what `compute` sends there}.

    `existing`, optional: a PCollection of (track_id, content_sha256) to skip.
    `compute`, optional: the StreamTrack DoFn (default ComputeLogMel(config): shard
    records); the embed jobs pass theirs, whose main output is window chunks.
    """

    def __init__(
        self,
        config: FeatureConfig = DEFAULT_FEATURE_CONFIG,
        existing=None,
        *,
        time_budget_s: float | None = None,
        compute: StreamTrack | None = None,
    ):
        super().__init__()
        self._compute = compute or ComputeLogMel(config, time_budget_s=time_budget_s)
        self._existing = existing

    def expand(self, tracks):
        # Grouping by track id both finds duplicates and redistributes the work (it is a
        # shuffle), so decoding spreads over all workers even when listing did not.
        unique = (
            tracks
            | "GroupByTrackId" >> beam.GroupByKey()
            | "KeepOneUriPerTrack" >> beam.ParDo(KeepOneUriPerTrack()).with_outputs("errors", main="tracks")
        )
        existing = beam.pvalue.AsDict(self._existing) if self._existing is not None else None
        computed = unique.tracks | "ComputeLogMel" >> beam.ParDo(self._compute, existing=existing).with_outputs(
            "errors", "skipped", "partials", main="features"
        )
        errors = (unique.errors, computed.errors) | "AllErrors" >> beam.Flatten()
        return {"features": computed.features, "errors": errors, "skipped": computed.skipped, "partials": computed.partials}


def build_pipeline(
    pipeline: beam.Pipeline,
    *,
    source: str,
    output_dir: str,
    num_shards: int = 0,
    dtype: str = "float16",
    config: FeatureConfig = DEFAULT_FEATURE_CONFIG,
    time_budget_s: float | None = None,
    gzip_level: int = DEFAULT_GZIP_LEVEL,
) -> None:
    """The features job: list → group by track id → decode + log-mel → shards + errors,
    and the number of each (for the commit) written next to them in `output_dir`."""
    results = (
        pipeline
        | "ListTracks" >> ListTracks(source)
        | "ExtractLogMel" >> ExtractLogMel(config, time_budget_s=time_budget_s)
    )
    serialized = results["features"] | "Serialize" >> beam.Map(serialize_record, dtype=dtype)
    _ = serialized | "WriteShards" >> beam.io.Write(
        GzipTFRecordSink(FileSystems.join(output_dir, SHARD_PREFIX), num_shards=num_shards, gzip_level=gzip_level)
    )
    _ = results["errors"] | "WriteErrors" >> WriteDeadLetters(output_dir)
    # Tracks, not records: a long track is several segments, the last one final.
    counted = {SHARD_PREFIX: results["features"], ERRORS_PREFIX: results["errors"]}
    _ = counted | "CountOutputs" >> commit.write_totals(output_dir, {SHARD_PREFIX: _final})


class GzipTFRecordSink(FileBasedSink):
    """Gzip TFRecord shards (what beam.io.WriteToTFRecord writes) at a chosen gzip level
    (contracts.shards.gzip_writer): Beam's sink always compresses with zlib's level 6."""

    def __init__(self, file_path_prefix: str, *, num_shards: int = 0, gzip_level: int = DEFAULT_GZIP_LEVEL):
        super().__init__(
            file_path_prefix, BytesCoder(), file_name_suffix=SHARD_SUFFIX, num_shards=num_shards,
            shard_name_template=SHARD_TEMPLATE, compression_type=CompressionTypes.UNCOMPRESSED,
        )
        self._gzip_level = gzip_level

    def open(self, temp_path: str) -> "_GzipShardFile":
        return _GzipShardFile(super().open(temp_path), self._gzip_level)

    def write_encoded_record(self, file_handle: "_GzipShardFile", encoded_value: bytes) -> None:
        write_shard_record(file_handle, encoded_value)


class _GzipShardFile:
    """A gzip stream onto a file it closes with itself (gzip_writer's leaves it open)."""

    def __init__(self, raw, level: int):
        self._raw = raw
        self._gzip = gzip_writer(raw, level)

    def write(self, data: bytes) -> None:
        self._gzip.write(data)

    def close(self) -> None:
        self._gzip.close()
        self._raw.close()


def _final(record: FeatureRecord) -> int:
    return int(record.final)


def run(argv: list[str] | FeaturesSettings | None = None) -> launch.JobResult:
    """The features job from its command line (or settings already validated)."""
    settings = argv if isinstance(argv, FeaturesSettings) else FeaturesSettings.from_argv(argv)
    done = launch.to_directory(
        "features",
        output_dir=settings.output,
        # The workers decode in their front-end processes, so on the embedded runner they
        # are threads of the launcher: worker processes import Beam again (~2.4 CPU-s each;
        # the job's fixed cost was 6.9 CPU-s with two of them, 3.2 without; docs/front-end.md).
        options=make_pipeline_options(list(settings.beam_args), default_mode="multi_threading"),
        build=lambda pipeline, staging_dir: build_pipeline(
            pipeline,
            source=settings.source,
            output_dir=staging_dir,
            num_shards=settings.shards,
            dtype=settings.dtype,
            time_budget_s=settings.time_budget_s,
            gzip_level=settings.gzip_level,
        ),
        prefixes=OUTPUT_PREFIXES,
        settings=settings.record(),
    )
    counters = counter_values(done.pipeline_result)
    text = summary(done.manifest, counters, output_dir=settings.output, elapsed_s=done.seconds)
    audio = {"audio_seconds": counters["audio_seconds"]} if "audio_seconds" in counters else {}
    return done.result("features", kind=SHARD_PREFIX, text=text, counts=audio)


def summary(manifest: dict, counters: dict[str, int], *, output_dir: str, elapsed_s: float) -> str:
    """Track counts from the commit (what the files hold); audio seconds from the
    counters where the runner reports them."""
    written, failed = (manifest["counts"].get(k, 0) for k in (SHARD_PREFIX, ERRORS_PREFIX))
    audio = ""
    if "audio_seconds" in counters:
        audio_s = counters["audio_seconds"]
        audio = f"{audio_s} s of audio, {audio_s / max(elapsed_s, 1e-9):.0f}x real time, "
    return "\n".join(
        [
            f"features: {written + failed} tracks read, {written} written, {failed} failed, "
            f"{audio}{elapsed_s:.1f} s; run {manifest['run_id']}",
            f"  shards: {FileSystems.join(output_dir, SHARD_PREFIX)}-{manifest['run_id']}-*-of-*{SHARD_SUFFIX} "
            "(one tf.train.Example per track, or per 10.9-minute segment of a longer one: track_id, uri, "
            "content_sha256, log_mel [n_frames, 96], frame_offset, final, ...)",
            f"  errors: {FileSystems.join(output_dir, ERRORS_PREFIX)}-{manifest['run_id']}-*-of-*.jsonl "
            "(one JSON line per input that failed: uri, track_id, stage, error_type, message)",
            f"  manifest: {FileSystems.join(output_dir, MANIFEST_NAME)} (the committed files; "
            "readers given the directory follow it)",
        ]
    )
