"""The inference settings of the embed job: InferenceSpec, batching, engines, recorded columns."""
import glob

import numpy as np
import pyarrow.parquet as pq
import pytest

from audio_files import tone, write_audio
from musicrep.errors import ConfigError
from musicrep.model import engines
from musicrep.pipelines import embed as embed_job
from musicrep.contracts import schema
from musicrep.pipelines.inference import EmbeddingModelHandler, TrackWindows, iterate_batches
from musicrep.pipelines.settings import InferenceSpec

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


def track(rng, track_id: str, n_frames: int, starts: list[int], length: int) -> TrackWindows:
    return TrackWindows(track_id, track_id, "", n_frames / 100, "", rng.random((n_frames, 96), dtype=np.float32),
                        np.array(starts), length)


@pytest.mark.parametrize("fields, message", [
    ({"batch_size": 0}, "batch_size must be ≥ 1, got 0"),
    ({"engine": "onnx"}, "unknown engine 'onnx'"),
    ({"precision": "fp16"}, "unknown precision 'fp16'"),
    ({"engine": "openvino", "jit_compile": True}, "jit_compile is a TensorFlow option"),
])
def test_spec_refuses_bad_settings(fields, message):
    with pytest.raises(ConfigError, match=message):
        InferenceSpec(**fields)


def test_model_calls_are_bounded_in_windows_not_chunks(rng):
    # A 10-hour track is ~140 chunks of 128 windows; short tracks are chunks of a few.
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that

    sizes = [128] * 40 + [3, 1, 60] * 10
    chunks = [track(rng, f"t{i}", 10, list(range(n)), 1) for i, n in enumerate(sizes)]
    handler = EmbeddingModelHandler("unused", max_windows_per_call=512)

    def check(windows_per_call):
        assert max(windows_per_call) <= 512 and sum(windows_per_call) == sum(sizes), windows_per_call
        # Calls are filled (no chunk of ≤ 128 windows would have fitted), not grown from one
        # chunk: only a bundle's last call is short.
        assert sorted(windows_per_call)[1:] == sorted(n for n in windows_per_call if n > 512 - 128), windows_per_call

    with TestPipeline() as pipeline:
        calls = (
            pipeline
            | beam.Create(chunks, reshuffle=False)
            | beam.BatchElements(**handler.batch_elements_kwargs())
            | beam.Map(lambda batch: sum(len(chunk.starts) for chunk in batch))
        )
        assert_that(calls, check)


def test_batches_are_cut_straight_into_their_own_arrays(rng):
    tracks = [track(rng, "x", 700, [50, 250, 400], 300), track(rng, "y", 400, [50, 100], 300)]
    batches = list(iterate_batches(tracks, batch_size=2))
    assert [pieces for _, _, pieces in batches] == [[(0, slice(0, 2))], [(0, slice(2, 3)), (1, slice(0, 1))], [(1, slice(1, 2))]]
    for _, windows, pieces in batches:
        owners = [(i, j) for i, part in pieces for j in range(part.start, part.stop)]
        assert len(owners) == len(windows)
        for window, (i, j) in zip(windows, owners):
            start = tracks[i].starts[j]
            np.testing.assert_array_equal(window, tracks[i].log_mel[start : start + 300].T)
    # Each batch owns a contiguous float32 array the model reads without another copy.
    for _, windows, _ in batches:
        assert windows.base is None and windows.flags["C_CONTIGUOUS"] and windows.dtype == np.float32


def test_batch_size_is_counted_from_the_arrays_not_a_pickle(rng):
    chunks = [track(rng, "x", 700, [50, 250, 400], 300), track(rng, "y", 400, [50, 100], 300)]
    assert EmbeddingModelHandler("unused").get_num_bytes(chunks) == 700 * 96 * 4 + 400 * 96 * 4 + 5 * 8


def test_engines_give_the_same_window_embeddings(tiny_model_uri, rng):
    tracks = [track(rng, "x", 700, [50, 250, 400], 300), track(rng, "short", 120, [0], 120)]
    results = {}
    for engine in engines.ENGINES:
        handler = EmbeddingModelHandler(tiny_model_uri, InferenceSpec(batch_size=2, engine=engine))
        results[engine] = [r.inference for r in handler.run_inference(tracks, handler.load_model())]
    assert [r.shape for r in results["tf"]] == [(3, 224), (1, 224)]
    for ours, theirs in zip(results["openvino"], results["tf"]):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> str:
    directory = tmp_path_factory.mktemp("audio")
    write_audio(str(directory / "a.wav"), tone(440.0, 9.0, 16000), 16000)
    return str(directory)


def read_rows(output_dir: str) -> list[dict]:
    return [row for path in glob.glob(f"{output_dir}/embeddings-*.parquet") for row in pq.read_table(path).to_pylist()]


def test_rows_record_engine_precision_and_window_settings(audio, tiny_model_uri, tmp_path):
    out = str(tmp_path / "out")
    embed_job.run(["--audio", f"{audio}/*.wav", "--model", tiny_model_uri, "--output", out,
                   "--engine", "openvino", "--max-windows", "2", "--aggregate", "max", *IN_MEMORY])
    (path,) = glob.glob(f"{out}/embeddings-*.parquet")
    assert pq.read_schema(path).metadata[b"musicrep_schema"] == schema.SCHEMA_VERSION.encode() == b"musicrep-embeddings-2"
    (row,) = read_rows(out)
    assert (row["engine"], row["precision"], row["aggregate"], row["max_windows"], row["n_windows"]) == (
        "openvino", "fp32", "max", 2, 2)


def test_rows_of_another_engine_precision_or_window_setting_are_recomputed():
    from musicrep.contracts.window_spec import WindowSpec

    key = WindowSpec().key()
    row = {"model_id": "m", "window_spec": key, "engine": "tf", "precision": "fp32"}

    def made_by(*settings):
        return embed_job._made_by(row, embed_job._reuse_key(*settings))

    assert made_by("m", key, "tf", "fp32")
    assert not made_by("m", key, "openvino", "fp32")
    assert not made_by("m", key, "tf", "bf16")
    assert not made_by("other", key, "tf", "fp32")
    for other in (WindowSpec(hop_s=1.0), WindowSpec(window_s=2.0), WindowSpec(max_windows=4), WindowSpec(aggregate="max")):
        assert not made_by("m", other.key(), "tf", "fp32")
    assert not embed_job._made_by({"model_id": "m"}, embed_job._reuse_key("m", key, "tf", "fp32"))  # a version-1 row


def test_job_refuses_bf16_without_bf16_units(audio, tiny_model_uri, tmp_path, monkeypatch):
    monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(Exception, match="bf16 needs a CPU with amx_bf16 or avx512_bf16"):
        embed_job.run(["--audio", f"{audio}/*.wav", "--model", tiny_model_uri, "--output", str(tmp_path / "out"),
                       "--engine", "openvino", "--precision", "bf16", *IN_MEMORY])


@pytest.mark.parametrize("flags, precision, expected", [
    (frozenset({"avx512f", "avx512_bf16"}), "bf16", "openvino"),
    (frozenset({"avx512f", "avx512_bf16"}), "fp32", "tf"),
    (frozenset({"avx2"}), "fp32", "openvino"),
])
def test_rows_record_the_engine_auto_picked(audio, tiny_model_uri, tmp_path, monkeypatch, flags, precision, expected):
    """--engine is auto by default; the rows name the engine the worker ran, not "auto"."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU makes auto pick tf")
    monkeypatch.setattr(engines, "cpu_flags", lambda: flags)
    out = str(tmp_path / "out")
    embed_job.run(["--audio", f"{audio}/*.wav", "--model", tiny_model_uri, "--output", out,
                   "--precision", precision, "--max-windows", "1", *IN_MEMORY])
    (row,) = read_rows(out)
    assert (row["engine"], row["precision"]) == (expected, precision)


def test_partials_merge_the_engines_that_ran():
    from musicrep.pipelines.embed_transforms import TrackPartial, merge_partials

    merged = merge_partials([TrackPartial(engine="tf"), TrackPartial(engine="openvino"), TrackPartial(), TrackPartial(engine="tf")])
    assert merged.engine == "openvino+tf"
    assert merge_partials([TrackPartial(engine="tf"), TrackPartial(final={"uri": "u"})]).engine == "tf"


def test_reuse_with_auto_accepts_rows_of_any_engine_at_the_precision():
    from musicrep.contracts.window_spec import WindowSpec

    key = WindowSpec().key()
    auto = embed_job._reuse_key("m", key, "auto", "bf16")
    assert embed_job._made_by({"model_id": "m", "window_spec": key, "engine": "openvino", "precision": "bf16"}, auto)
    assert embed_job._made_by({"model_id": "m", "window_spec": key, "engine": "tf", "precision": "bf16"}, auto)
    assert not embed_job._made_by({"model_id": "m", "window_spec": key, "engine": "tf", "precision": "fp32"}, auto)
