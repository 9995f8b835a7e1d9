"""gs:// through Beam's FileSystems and Beam sinks/sources, against the local GCS emulator.

The jobs do all their I/O through `apache_beam.io.filesystems.FileSystems`, so what is
proven here for gs:// holds for their inputs, outputs and model URIs on Dataflow.
"""
from __future__ import annotations

import gzip
import json

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to


def test_filesystems_create_open_match_delete(gcs_emulator):
    payload = bytes(range(256)) * 4096  # 1 MiB: more than one upload chunk of small buffers
    url = gcs_emulator.url("fs", "nested dir", "blob-ä.bin")

    with FileSystems.create(url) as handle:
        handle.write(payload)
    with FileSystems.open(url) as handle:
        assert handle.read() == payload

    (match,) = FileSystems.match([gcs_emulator.url("fs", "**")])
    assert [(m.path, m.size_in_bytes) for m in match.metadata_list] == [(url, len(payload))]
    assert FileSystems.exists(url)
    assert gcs_emulator.read_bytes("fs/nested dir/blob-ä.bin") == payload

    FileSystems.delete([url])
    assert not FileSystems.exists(url)
    assert gcs_emulator.list("fs/") == []


def test_filesystems_rename_and_directory_helpers(gcs_emulator, tmp_path):
    source = tmp_path / "model"
    (source / "variables").mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"\x08\x01")
    (source / "variables" / "variables.index").write_bytes(b"index")
    urls = gcs_emulator.upload_dir(source, "models/m1")
    assert urls == gcs_emulator.list("models/m1/")

    FileSystems.rename([gcs_emulator.url("models/m1/saved_model.pb")],
                       [gcs_emulator.url("models/m2/saved_model.pb")])
    assert gcs_emulator.list("models/m2/") == [gcs_emulator.url("models/m2/saved_model.pb")]

    written = gcs_emulator.download("models/m1", tmp_path / "copy")
    assert [p.relative_to(tmp_path / "copy").as_posix() for p in written] == [
        "variables/variables.index"]
    FileSystems.delete([gcs_emulator.url("models")])
    assert gcs_emulator.list("models/") == []


class _CountWords(beam.PTransform):
    def expand(self, lines):
        return (
            lines
            | "Split" >> beam.FlatMap(str.split)
            | "PairWithOne" >> beam.Map(lambda word: (word, 1))
            | "Count" >> beam.CombinePerKey(sum)
            | "Format" >> beam.MapTuple(lambda word, count: json.dumps([word, count]))
        )


def _options(mode: str, workers: int) -> PipelineOptions:
    return PipelineOptions(
        direct_running_mode=mode, direct_num_workers=workers, pipeline_type_check=True
    )


@pytest.mark.parametrize(
    ("mode", "workers"), [("in_memory", 1), ("multi_processing", 2)], ids=["in_memory", "2_processes"]
)
def test_pipeline_reads_and_writes_gs(gcs_emulator, mode, workers):
    prefix = f"wordcount-{mode}"
    lines = ["the quick brown fox", "jumps over the lazy dog", "the end"] * 50
    with FileSystems.create(gcs_emulator.url(prefix, "in", "a.txt.gz")) as handle:
        handle.write(gzip.compress("\n".join(lines[:75]).encode()))
    with FileSystems.create(gcs_emulator.url(prefix, "in", "b.txt")) as handle:
        handle.write("\n".join(lines[75:]).encode())

    with beam.Pipeline(runner=FnApiRunner(), options=_options(mode, workers)) as pipeline:
        counts = (
            pipeline
            | "Read" >> beam.io.ReadFromText(gcs_emulator.url(prefix, "in", "*"))
            | "CountWords" >> _CountWords()
        )
        _ = counts | "WriteText" >> beam.io.WriteToText(
            gcs_emulator.url(prefix, "out", "counts"), file_name_suffix=".jsonl", num_shards=2)
        _ = (
            counts
            | "Encode" >> beam.Map(str.encode)
            | "WriteTFRecord" >> beam.io.WriteToTFRecord(
                gcs_emulator.url(prefix, "out", "counts"), file_name_suffix=".tfrecord.gz")
        )

    outputs = gcs_emulator.list(f"{prefix}/out/")
    assert outputs == [
        gcs_emulator.url(prefix, "out", "counts-00000-of-00001.tfrecord.gz"),
        gcs_emulator.url(prefix, "out", "counts-00000-of-00002.jsonl"),
        gcs_emulator.url(prefix, "out", "counts-00001-of-00002.jsonl"),
    ]  # and no temporary files left behind
    expected = {"the": 150, "quick": 50, "brown": 50, "fox": 50, "jumps": 50, "over": 50,
                "lazy": 50, "dog": 50, "end": 50}
    text_rows = [
        json.loads(line)
        for url in outputs if url.endswith(".jsonl")
        for line in gcs_emulator.read_bytes(url.split("/", 3)[3]).decode().splitlines()
    ]
    assert dict(text_rows) == expected and len(text_rows) == len(expected)

    with beam.Pipeline(runner=FnApiRunner(), options=_options("in_memory", 1)) as pipeline:
        records = (
            pipeline
            | "ReadTFRecord" >> beam.io.ReadFromTFRecord(gcs_emulator.url(prefix, "out", "*.tfrecord.gz"))
            | "Decode" >> beam.Map(lambda record: tuple(json.loads(record)))
        )
        assert_that(records, equal_to(list(expected.items())))
