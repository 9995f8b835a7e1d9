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

from job_outputs import without_run_id


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
    FileSystems.delete([gcs_emulator.url("models") + "/"])  # trailing "/": the whole prefix
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
        [], direct_running_mode=mode, direct_num_workers=workers, pipeline_type_check=True
    )


@pytest.mark.parametrize(
    ("mode", "workers"), [("in_memory", 1), ("multi_processing", 2)], ids=["in_memory", "2_processes"]
)
def test_pipeline_reads_and_writes_gs(gcs_emulator, mode, workers):
    prefix = f"wordcount-{mode}"
    lines = ["the quick brown fox", "jumps over the lazy dog", "the end"] * 50
    with FileSystems.create(gcs_emulator.url(prefix, "in", "a.txt.gz")) as handle:
        handle.write("\n".join(lines[:75]).encode())  # gzipped by FileSystems (from the name)
    with FileSystems.create(gcs_emulator.url(prefix, "in", "b.txt")) as handle:
        handle.write("\n".join(lines[75:]).encode())
    stored = gcs_emulator.read_bytes(f"{prefix}/in/a.txt.gz")
    assert gzip.decompress(stored).decode() == "\n".join(lines[:75])

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
                gcs_emulator.url(prefix, "out", "counts"), file_name_suffix=".tfrecord.gz",
                num_shards=1)
        )

    outputs = gcs_emulator.list(f"{prefix}/out/")
    assert outputs == sorted([
        gcs_emulator.url(prefix, "out", "counts-00000-of-00001.tfrecord.gz"),
        gcs_emulator.url(prefix, "out", "counts-00000-of-00002.jsonl"),
        gcs_emulator.url(prefix, "out", "counts-00001-of-00002.jsonl"),
    ])  # and no temporary files left behind
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


def test_model_export_round_trip_on_gs(gcs_emulator, tmp_path):
    """model.export saves/loads through Beam FileSystems, so gs:// model URIs work (TF's own
    gfile would not reach the emulator: its GCS endpoints are compiled in)."""
    import numpy as np

    from musicrep.model import export, sf_nfnet_f0
    from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS

    config = SF_NFNET_VARIANTS["tiny"]
    model = sf_nfnet_f0(config)
    uri = gcs_emulator.url("models", "tiny")
    saved = export.save(model, uri, config=config, source="test")
    assert gcs_emulator.list("models/tiny/") == [
        gcs_emulator.url("models/tiny/model.json"), gcs_emulator.url("models/tiny/model.keras")]

    loaded = export.load(uri)  # verify=True recomputes model_id from the loaded weights
    assert export.read_metadata(uri).model_id == saved.model_id
    batch = np.random.default_rng(0).standard_normal((2, 96, 300)).astype(np.float32)
    np.testing.assert_allclose(loaded(batch).numpy(), model(batch).numpy(), rtol=0, atol=1e-6)

    # The Dockerfile's MODEL_URI bake-in copies the same tree through FileSystems.
    fetch_model = _import_fetch_model()
    assert fetch_model.copy_tree(uri, str(tmp_path / "baked")) == 2
    assert (tmp_path / "baked" / "model.keras").read_bytes() == gcs_emulator.read_bytes("models/tiny/model.keras")


def _import_fetch_model():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "docker" / "fetch_model.py"
    spec = importlib.util.spec_from_file_location("musicrep_docker_fetch_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_tone_wav(path, freq_hz: float, seconds: float, rate_hz: int = 22050) -> None:
    import wave

    import numpy as np

    t = np.arange(int(seconds * rate_hz)) / rate_hz
    pcm = (0.4 * np.sin(2 * np.pi * freq_hz * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate_hz)
        handle.writeframes(pcm.tobytes())


def _feature_records(urls: list[str]) -> dict[str, tuple]:
    from musicrep.contracts.shards import parse_record

    records = {}
    for url in urls:
        with FileSystems.open(url) as handle:  # gzip from the name
            data = handle.read()
        offset = 0
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 8], "little")
            record = parse_record(data[offset + 12:offset + 12 + length])
            records[record.track_id] = (record.content_sha256, record.n_frames, record.log_mel.tobytes())
            offset += 12 + length + 4
    return records


def test_features_job_reads_and_writes_gs(gcs_emulator, tmp_path):
    """`musicrep features` with gs:// input and output gives the same shards as on local disk."""
    from musicrep.pipelines import features

    catalog = tmp_path / "catalog"
    (catalog / "sub").mkdir(parents=True)
    _write_tone_wav(catalog / "a440.wav", 440.0, 1.5)
    _write_tone_wav(catalog / "sub" / "a880.wav", 880.0, 2.0, rate_hz=16000)
    (catalog / "broken.wav").write_bytes(b"not audio")
    gcs_emulator.upload_dir(catalog, "features-job/catalog")
    runner = ["--direct_running_mode=in_memory", "--direct_num_workers=1", "--shards=1"]

    features.run(["--input", gcs_emulator.url("features-job/catalog/**"),
                  "--output", gcs_emulator.url("features-job/out"), *runner])
    features.run(["--input", str(catalog / "**"), "--output", str(tmp_path / "local"), *runner])

    on_gs = gcs_emulator.list("features-job/out/")
    # The committed files and their manifest, nothing else (no staging or Beam temp objects).
    assert [without_run_id(url.split("features-job/out/", 1)[1]) for url in on_gs] == [
        "_MANIFEST.json", "errors-00000-of-00001.jsonl", "features-00000-of-00001.tfrecord.gz"]
    local = sorted(str(p) for p in (tmp_path / "local").glob("features-*.tfrecord.gz"))
    gs_records = _feature_records([url for url in on_gs if url.endswith(".tfrecord.gz")])
    assert sorted(gs_records) == ["a440", "sub/a880"]
    assert gs_records == _feature_records(local)
    (errors_url,) = [url for url in on_gs if url.endswith(".jsonl")]
    errors = [json.loads(line) for line in gcs_emulator.read_bytes(
        errors_url.split("/", 3)[3]).decode().splitlines()]
    assert [(e["track_id"], e["uri"]) for e in errors] == [
        ("broken", gcs_emulator.url("features-job/catalog/broken.wav"))]
