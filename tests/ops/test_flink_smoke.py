"""A small pipeline on a real Flink (Beam's job server, Flink's embedded cluster, LOOPBACK
harness) gives exactly the embedded runner's output.

The pipeline exercises what the features/embed jobs need from a runner: a DoFn with setup
and a tagged dead-letter output, a Reshuffle, a GroupByKey, metrics, and file sinks
(WriteToText and WriteToTFRecord with gzip).
"""
from __future__ import annotations

import gzip
import json
import pathlib
import time

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from tests.flink_support import FlinkUnavailable, flink_pipeline_args, flink_required

DEAD_LETTER = "dead_letter"


class _ParseLine(beam.DoFn):
    """`track_id,word word ...` -> (word, track_id) pairs; malformed lines to the dead letter."""

    def setup(self) -> None:
        self._separator = ","  # stands in for heavy per-worker state (mel basis, model)
        self._parsed = Metrics.counter(self.__class__, "lines_parsed")

    def process(self, line: str):
        track_id, separator, text = line.partition(self._separator)
        if not separator or not text.strip():
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, json.dumps({"line": line, "error_type": "malformed"}))
            return
        self._parsed.inc()
        for word in text.split():
            yield word.lower(), track_id


class WordIndex(beam.PTransform):
    """Lines -> one JSON record per word (sorted track ids, count) plus dead letters."""

    def expand(self, lines):
        parsed = (
            lines
            | "Reshuffle" >> beam.Reshuffle()
            | "Parse" >> beam.ParDo(_ParseLine()).with_outputs(DEAD_LETTER, main="words")
        )
        index = (
            parsed.words
            | "GroupByWord" >> beam.GroupByKey()
            | "Format" >> beam.MapTuple(
                lambda word, tracks: json.dumps([word, sorted(tracks), len(list(tracks))]))
        )
        return index, parsed[DEAD_LETTER]


def _lines() -> list[str]:
    words = ["alpha", "Beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    lines = [f"track{i:03d},{' '.join(words[j % 8] for j in range(i, i + 1 + i % 5))}" for i in range(200)]
    return lines + ["no separator here", "track999,   "]


def run_word_index(output_dir: pathlib.Path, options: PipelineOptions, runner=None) -> dict[str, list[str]]:
    """Runs WordIndex and returns {output kind: sorted records}; also checks the counter."""
    with beam.Pipeline(runner=runner, options=options) as pipeline:
        index, dead = pipeline | "Create" >> beam.Create(_lines()) | "WordIndex" >> WordIndex()
        _ = index | "WriteIndex" >> beam.io.WriteToText(
            str(output_dir / "index"), file_name_suffix=".jsonl", num_shards=2)
        _ = (index
             | "Encode" >> beam.Map(str.encode)
             | "WriteTFRecord" >> beam.io.WriteToTFRecord(
                 str(output_dir / "index"), file_name_suffix=".tfrecord.gz", num_shards=2))
        _ = dead | "WriteErrors" >> beam.io.WriteToText(
            str(output_dir / "errors"), file_name_suffix=".jsonl", num_shards=1)
    parsed = pipeline.result.metrics().query(MetricsFilter().with_name("lines_parsed"))["counters"]
    assert sum(counter.committed for counter in parsed) == 200
    return _read_outputs(output_dir)


def _read_outputs(output_dir: pathlib.Path) -> dict[str, list[str]]:
    files = sorted(p.name for p in output_dir.iterdir())
    assert files == [
        "errors-00000-of-00001.jsonl",
        "index-00000-of-00002.jsonl", "index-00000-of-00002.tfrecord.gz",
        "index-00001-of-00002.jsonl", "index-00001-of-00002.tfrecord.gz",
    ]  # every shard present, no temporary files left
    outputs = {"text": [], "tfrecord": [], "errors": []}
    for path in sorted(output_dir.iterdir()):
        if path.name.startswith("errors"):
            outputs["errors"] += path.read_text().splitlines()
        elif path.name.endswith(".jsonl"):
            outputs["text"] += path.read_text().splitlines()
        else:
            outputs["tfrecord"] += [record.decode() for record in _tfrecords(path)]
    return {kind: sorted(records) for kind, records in outputs.items()}


def _tfrecords(path: pathlib.Path):
    """Independent TFRecord reader (length, masked crc, data, masked crc) over gzip."""
    data = gzip.decompress(path.read_bytes())
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 8], "little")
        yield data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4


def _embedded_reference(tmp_path: pathlib.Path, mode: str = "in_memory", workers: int = 1):
    output = tmp_path / f"embedded-{mode}"
    output.mkdir()
    options = PipelineOptions([], direct_running_mode=mode, direct_num_workers=workers)
    return run_word_index(output, options, runner=FnApiRunner())


def test_word_index_harness_is_runner_independent(tmp_path):
    """The comparison itself, on two embedded modes (runs without Flink)."""
    reference = _embedded_reference(tmp_path)
    assert len(reference["text"]) == 8 and reference["text"] == reference["tfrecord"]
    assert [json.loads(e)["line"] for e in reference["errors"]] == ["no separator here", "track999,   "]
    assert _embedded_reference(tmp_path, "multi_threading", 2) == reference


@pytest.mark.flink
def test_flink_output_equals_embedded_runner(tmp_path):
    try:
        args = flink_pipeline_args(tmp_path)
    except FlinkUnavailable as error:
        if flink_required():
            raise
        pytest.skip(f"Flink job server unavailable: {error}")
    reference = _embedded_reference(tmp_path)

    output = tmp_path / "flink"
    output.mkdir()
    started = time.monotonic()
    on_flink = run_word_index(output, PipelineOptions(args))
    print(f"flink run: {time.monotonic() - started:.1f} s")  # shown with -s / in -rA

    assert on_flink == reference
    assert FileSystems.exists(str(output / "errors-00000-of-00001.jsonl"))


def test_job_server_jar_lookup_order(tmp_path, monkeypatch):
    from tests import flink_support

    if flink_support.shutil.which("java") is None:
        pytest.skip("no java on PATH")
    monkeypatch.delenv("MUSICREP_FLINK_JOB_SERVER_JAR", raising=False)
    monkeypatch.setenv("MUSICREP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # an empty ~/.m2
    with pytest.raises(FlinkUnavailable, match="not in .*cache"):
        flink_support.flink_job_server_jar(fetch=False)

    _, artifact, version = flink_support.job_server_artifact()
    assert (artifact, version) == (f"beam-runners-flink-{flink_support.DEFAULT_FLINK_VERSION}-job-server",
                                    beam.version.__version__)
    in_m2 = tmp_path / "home/.m2/repository/org/apache/beam" / artifact / version / f"{artifact}-{version}.jar"
    in_m2.parent.mkdir(parents=True)
    in_m2.touch()
    assert flink_support.flink_job_server_jar(fetch=False) == str(in_m2)
    cached = tmp_path / "cache" / f"{artifact}-{version}.jar"
    cached.parent.mkdir()
    cached.touch()
    assert flink_support.flink_job_server_jar(fetch=False) == str(cached)
    monkeypatch.setenv("MUSICREP_FLINK_JOB_SERVER_JAR", str(tmp_path / "missing.jar"))
    with pytest.raises(FlinkUnavailable, match="missing.jar"):
        flink_support.flink_job_server_jar()


def test_flink_pipeline_args_parse_as_flink_options(tmp_path):
    from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions

    args = flink_pipeline_args(tmp_path, jar="/opt/job-server.jar", parallelism=3)
    options = PipelineOptions(args)
    flink = options.view_as(FlinkRunnerOptions)
    assert (flink.flink_master, flink.flink_job_server_jar, flink.parallelism) == ("[local]", "/opt/job-server.jar", 3)
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"
    assert options.get_all_options(retain_unknown_options=True)["runner"] == "FlinkRunner"
