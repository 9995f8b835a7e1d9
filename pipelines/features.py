"""The `features` job: a catalog of audio files → log-mel TFRecord shards.

    musicrep features --input 'gs://bucket/catalog/**/*.mp3' --output gs://bucket/features
    musicrep features --input manifest.csv --output /data/features --shards 64

Every input ends in exactly one of two outputs: a `tf.train.Example` in
DIR/features-RUN_ID-SSSSS-of-NNNNN.tfrecord.gz (schema: musicrep.features.shards), or a
line in DIR/errors-RUN_ID-SSSSS-of-NNNNN.jsonl saying which stage failed and why.
DIR/_MANIFEST.json lists the files of the last committed run (musicrep.pipelines.commit).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import logging
import os
import time
from typing import Any, Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from musicrep import fileio
from musicrep.errors import ConfigError, TooShortError, TrackTimeoutError
from musicrep.features.config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.features.shards import SHARD_KIND, FeatureRecord, serialize_record
from musicrep.features.stream import SEGMENT_FRAMES, Segmenter, Stopwatch, TrackLogMel, check_time_budget
from musicrep.manifest import MANIFEST_NAME
from musicrep.pipelines import commit
from musicrep.pipelines.options import METRICS_NAMESPACE, counter_values, make_pipeline_options
from musicrep.pipelines.outputs import ERRORS_PREFIX, SHARD_TEMPLATE, WriteDeadLetters, error_record

logger = logging.getLogger(__name__)

SHARD_PREFIX = SHARD_KIND
OUTPUT_PREFIXES = (SHARD_PREFIX, ERRORS_PREFIX)
_PROGRESS_EVERY_S = 10.0


def is_manifest(source: str) -> bool:
    return source.lower().endswith((".csv", ".parquet")) and not fileio.is_glob(source)


def glob_prefix(pattern: str) -> str:
    """The fixed directory part of a glob: everything up to the last '/' before a wildcard."""
    head = pattern[: fileio.glob_start(pattern)]
    return head[: head.rfind("/") + 1]


def track_id_for(path: str, prefix: str) -> str:
    """Default track id: the path relative to the glob's fixed prefix, without extension."""
    relative = path[len(prefix) :] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
    stem, dot, extension = relative.rpartition(".")
    return stem if dot and "/" not in extension else relative


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

    With `existing` (track_id → content_sha256 of tracks already embedded with the same
    model and features), a track whose bytes hash to the known value is not decoded:
    it goes to the "skipped" output as (track_id, uri). `time_budget_s` bounds the time
    one track may take (a dead letter `timeout`); `max_samples` the waveform decoded.
    """

    def __init__(self, config: FeatureConfig, *, time_budget_s: float | None = None, max_samples: int | None = None):
        check_time_budget(time_budget_s)  # in the launcher, before any work
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
        # Import here: librosa (for the filterbank) loads once per worker, not in the launcher.
        import threadpoolctl

        from musicrep import features

        # Runners start one worker per core: BLAS threads on top only fight each other
        # (the resampler's and mel products run 2-3x slower with them on a busy machine).
        threadpoolctl.threadpool_limits(1, user_api="blas")
        features.mel_filterbank(self._config)
        self._done = 0
        self._last_progress = time.monotonic()

    def process(self, element: tuple[str, str], existing: dict[str, str] | None = None) -> Iterator:
        track_id, uri = element
        commit.pause_at(f"track:{track_id}")
        started = time.perf_counter()
        self._read.inc()
        track = TrackInProgress(track_id=track_id, uri=uri)
        stage = "read"
        try:
            with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                track.content_sha256 = fileio.sha256_of(handle)
                if existing and existing.get(track_id) == track.content_sha256:
                    self._skipped.inc()
                    yield beam.pvalue.TaggedOutput("skipped", (track_id, uri))
                    return
                handle.seek(0)
                stage = "decode"
                blocks = self.open_track(handle, Stopwatch(self._time_budget_s))
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

    def open_track(self, handle, stopwatch: Stopwatch):
        """The track as an iterable of blocks with `duration_s` once iterated: its log-mel
        (the device front end's DoFn gives decoded audio instead)."""
        return TrackLogMel(handle, config=self._config, max_samples=self._max_samples, stopwatch=stopwatch)

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
    musicrep.features.shards), or a dead letter naming the stage.

    A long track whose first segments are out when it fails (a timeout, a decode error
    hours in) is closed with what was decoded: its final record says so through the
    counter `tracks_truncated` and a warning, as one output for the input.
    """

    def __init__(self, config: FeatureConfig, *, time_budget_s: float | None = None, segment_frames: int = SEGMENT_FRAMES):
        super().__init__(config, time_budget_s=time_budget_s)
        self._segment_frames = segment_frames
        self._truncated = Metrics.counter(METRICS_NAMESPACE, "tracks_truncated")

    def on_block(self, track: TrackInProgress, block) -> Iterator:
        if track.state is None:
            track.state = Segmenter(self._segment_frames)
        for offset, frames in track.state.push(block):
            yield self._record(track, offset, frames, final=False)

    def on_end(self, track: TrackInProgress) -> Iterator:
        offset, frames = track.state.finish()
        yield self._record(track, offset, frames, final=True)

    def on_failure(self, track: TrackInProgress, letter: dict) -> Iterator:
        if track.state is None or not track.state.frames_out:
            yield beam.pvalue.TaggedOutput("errors", letter)
            return
        self._truncated.inc()
        offset, frames = track.state.finish()
        track.duration_s = (offset + frames.shape[0]) / self._config.frames_per_second
        logger.warning("track %r ends at %.0f s: %s", track.track_id, track.duration_s, letter["message"])
        yield self._record(track, offset, frames, final=True)

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
) -> None:
    """The features job: list → group by track id → decode + log-mel → shards + errors,
    and the number of each (for the commit) written next to them in `output_dir`."""
    results = (
        pipeline
        | "ListTracks" >> ListTracks(source)
        | "ExtractLogMel" >> ExtractLogMel(config, time_budget_s=time_budget_s)
    )
    serialized = results["features"] | "Serialize" >> beam.Map(serialize_record, dtype=dtype)
    _ = serialized | "WriteShards" >> beam.io.WriteToTFRecord(
        FileSystems.join(output_dir, SHARD_PREFIX),
        file_name_suffix=".tfrecord.gz",
        num_shards=num_shards,
        shard_name_template=SHARD_TEMPLATE,
        compression_type=CompressionTypes.GZIP,
    )
    _ = results["errors"] | "WriteErrors" >> WriteDeadLetters(output_dir)
    # Tracks, not records: a long track is several segments, the last one final.
    _ = results["features"] | "CountShardTracks" >> commit.WriteTotal(output_dir, SHARD_PREFIX, _final)
    _ = results["errors"] | "CountErrors" >> commit.WriteTotal(output_dir, ERRORS_PREFIX)


def _final(record: FeatureRecord) -> int:
    return int(record.final)


def add_time_budget_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        metavar="S",
        help="seconds of work one track may take (decode, log-mel and, in embed, the model); a track "
        "that takes longer is a dead letter 'timeout' with the time spent and the worker moves on "
        "(default: no budget; a 10-hour track takes ~6 min of one core)",
    )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="musicrep features",
        description="Decode an audio catalog and write 96-bin log-mel TFRecord shards (SPEC §1). "
        "Options not listed here go to Beam (e.g. --runner, --direct_num_workers, --project).",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="glob of audio files (local or gs://, e.g. 'catalog/**/*.mp3') or a manifest "
        ".csv/.parquet with columns track_id,uri",
    )
    parser.add_argument("--output", required=True, help="output directory (local or gs://)")
    parser.add_argument(
        "--shards", type=int, default=0, help="number of feature shards (default 0: the runner decides)"
    )
    parser.add_argument(
        "--dtype", choices=("float16", "float32"), default="float16", help="log-mel storage type (default float16)"
    )
    add_time_budget_argument(parser)
    return parser.parse_known_args(argv)


def run(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    if args.shards < 0:
        raise ConfigError(f"--shards must be >= 0, got {args.shards}")
    check_source(args.input)
    check_time_budget(args.time_budget_s)
    options = make_pipeline_options(beam_args)
    started = time.perf_counter()
    staged = commit.start_run(args.output)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, source=args.input, output_dir=staged.staging_dir, num_shards=args.shards,
                   dtype=args.dtype, time_budget_s=args.time_budget_s)
    result = commit.run_to_success(pipeline)
    manifest = commit.commit(staged, job="features", prefixes=OUTPUT_PREFIXES, settings=vars(args))
    elapsed_s = time.perf_counter() - started
    print(summary(manifest, counter_values(result), output_dir=args.output, elapsed_s=elapsed_s))
    return 0


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
            f"  shards: {FileSystems.join(output_dir, SHARD_PREFIX)}-{manifest['run_id']}-*-of-*.tfrecord.gz "
            "(one tf.train.Example per track, or per 10.9-minute segment of a longer one: track_id, uri, "
            "content_sha256, log_mel [n_frames, 96], frame_offset, final, ...)",
            f"  errors: {FileSystems.join(output_dir, ERRORS_PREFIX)}-{manifest['run_id']}-*-of-*.jsonl "
            "(one JSON line per input that failed: uri, track_id, stage, error_type, message)",
            f"  manifest: {FileSystems.join(output_dir, MANIFEST_NAME)} (the committed files; "
            "readers given the directory follow it)",
        ]
    )


def check_source(source: str) -> None:
    # Fail in the launcher, before any worker starts, when the input names nothing.
    if is_manifest(source):
        if not FileSystems.exists(source):
            raise ConfigError(f"manifest {source!r} does not exist")
        if source.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            with FileSystems.open(source, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                names = pq.read_schema(handle).names
            missing = {"track_id", "uri"} - set(names)
            if missing:
                raise ConfigError(f"manifest {source!r} lacks column(s) {sorted(missing)}; columns are {names}")
        return
    if not list(MatchPaths().process(source)):
        raise ConfigError(f"no files match {source!r}")
