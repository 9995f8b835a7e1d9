"""Inference engines: OpenVINO equals Keras, folded weight standardisation, bf16 hardware checks."""
import numpy as np
import pytest

from musicrep.errors import ConfigError
from musicrep.model import engines
from musicrep.model.export import save
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS
from musicrep.model.layers import WSConv2D


@pytest.fixture(scope="module")
def tiny_uri(tiny_model, tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("engines") / "tiny")
    save(tiny_model, uri, config=SF_NFNET_VARIANTS["tiny"], source="test")
    return uri


@pytest.mark.parametrize("engine", engines.ENGINES)
@pytest.mark.parametrize("frames", [300, 100])
def test_fp32_engines_equal_keras(tiny_model, tiny_uri, rng, engine, frames):
    """Both engines (kernels standardised once at load) compute the Keras forward; one
    OpenVINO conversion serves every window length."""
    windows = rng.standard_normal((5, 96, frames)).astype("float32")
    expected = np.asarray(tiny_model(windows, training=False))
    embed = engines.load_embedder(tiny_uri, engine=engine, precision="fp32")
    actual = embed(windows)
    assert actual.shape == expected.shape == (5, 224) and actual.dtype == np.float32
    # float32 with another summation order: measured max |Δ| ≈ 2e-7 on values of ~1.
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert engines.load_embedder(tiny_uri, engine=engine, precision="fp32") is embed  # once per process


def test_openvino_ir_is_cached_per_model_id(tiny_uri):
    from musicrep.model.export import read_metadata

    path = engines.openvino_ir_path(read_metadata(tiny_uri).model_id)
    engines.load_embedder(tiny_uri, engine="openvino", precision="fp32")
    with open(path) as handle:
        assert "<net " in handle.read(2000)


def test_a_second_start_compiles_from_the_weightless_cache(tiny_uri, rng, monkeypatch, tmp_path):
    """A worker's later start reads OpenVINO's compiled model from the cache beside the
    IR (a blob without the weights, far smaller than the IR's .bin) and computes the same."""
    import os
    import tempfile

    from musicrep.model.export import read_metadata

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(engines, "_loaded", {})
    windows = rng.standard_normal((3, 96, 300)).astype("float32")
    first = engines.load_embedder(tiny_uri, engine="openvino", precision="fp32")(windows)
    ir = engines.openvino_ir_path(read_metadata(tiny_uri).model_id)
    compiled = os.path.join(os.path.dirname(ir), "compiled")
    blobs = [os.path.join(compiled, name) for name in os.listdir(compiled)]
    assert len(blobs) == 1 and os.path.getsize(blobs[0]) < os.path.getsize(ir[:-4] + ".bin") / 2
    written = os.path.getmtime(blobs[0])
    monkeypatch.setattr(engines, "_loaded", {})
    again = engines.load_embedder(tiny_uri, engine="openvino", precision="fp32")(windows)
    assert os.listdir(compiled) == [os.path.basename(blobs[0])] and os.path.getmtime(blobs[0]) == written
    np.testing.assert_array_equal(again, first)


def test_folded_layer_computes_the_same_convolution(rng):
    """After fold_standardisation the layer convolves the kernel standardised at that
    moment; its variables no longer matter (inference only)."""
    x = rng.standard_normal((2, 6, 10, 4)).astype("float32")
    layer = WSConv2D(8, (1, 3), strides=(2, 1), groups=2)
    layer.build(x.shape)
    layer.set_weights([rng.standard_normal(layer.kernel.shape) * 2 + 1, rng.standard_normal(8), rng.uniform(0.5, 2, 8)])
    expected = np.asarray(layer(x))
    layer.fold_standardisation()
    layer.kernel.assign(np.zeros(layer.kernel.shape))
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=1e-6)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert engines.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert engines.cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize("flags, allowed", [({"avx2"}, False), ({"avx512_bf16"}, True), ({"amx_bf16"}, True)])
def test_bf16_needs_bf16_units(monkeypatch, flags, allowed):
    monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset(flags))
    engines.check_precision("fp32", engine="openvino")
    if allowed:
        engines.check_precision("bf16", engine="openvino")
    else:
        with pytest.raises(ConfigError, match="bf16 needs a CPU with amx_bf16 or avx512_bf16.*use --precision fp32"):
            engines.check_precision("bf16", engine="openvino")
        engines.check_precision("bf16", engine="tf", gpu=True)  # a GPU computes bf16 itself


def test_bf16_is_refused_at_load_without_bf16_units(monkeypatch, tiny_uri):
    import tensorflow as tf

    monkeypatch.setattr(engines, "cpu_flags", lambda: frozenset({"avx2"}))
    cpu_only = ["openvino"] if tf.config.list_physical_devices("GPU") else ["openvino", "tf"]
    for engine in cpu_only:
        with pytest.raises(ConfigError, match="bf16 needs a CPU"):
            engines.load_embedder(tiny_uri, engine=engine, precision="bf16")


def test_unknown_names_are_refused():
    with pytest.raises(ConfigError, match="unknown engine 'onnx'; known: tf, openvino"):
        engines.check_names(engine="onnx", precision="fp32")
    with pytest.raises(ConfigError, match="unknown precision 'fp16'; known: fp32, bf16"):
        engines.check_names(engine="tf", precision="fp16")


BF16_CPU, PLAIN_CPU = frozenset({"avx2", "avx512f", "avx512_bf16"}), frozenset({"avx2"})
AVX512_CPU = frozenset({"avx2", "avx512f"})


@pytest.mark.parametrize(
    "precision, gpu, flags, log_mel_on, expected",
    [
        ("fp32", False, PLAIN_CPU, "cpu", "openvino"),  # 1.56x tf fp32 in the job on AVX2 (Zen 3)
        ("fp32", False, AVX512_CPU, "cpu", "tf"),  # OpenVINO fp32 was slower in the job (Zen 4)
        ("fp32", False, BF16_CPU, "cpu", "tf"),
        ("fp32", False, PLAIN_CPU, "device", "tf"),
        ("fp32", True, PLAIN_CPU, "cpu", "tf"),
        ("bf16", False, BF16_CPU, "cpu", "openvino"),  # 2.07x tf fp32, where tf bf16 is 1.06x
        ("bf16", False, frozenset({"amx_bf16"}), "cpu", "openvino"),
        ("bf16", True, PLAIN_CPU, "cpu", "tf"),
        ("bf16", True, BF16_CPU, "cpu", "tf"),  # a GPU wins over the CPU's units
        ("bf16", True, BF16_CPU, "device", "tf"),
        ("fp32", False, BF16_CPU, "device", "tf"),  # the device front end is TF ops
    ],
)
def test_auto_engine_follows_the_hardware(precision, gpu, flags, log_mel_on, expected):
    assert engines.resolve_engine("auto", precision, gpu=gpu, flags=flags, log_mel_on=log_mel_on) == expected


def test_explicit_engines_are_kept():
    assert engines.resolve_engine("tf", "fp32", gpu=False, flags=BF16_CPU) == "tf"
    assert engines.resolve_engine("openvino", "fp32", gpu=True, flags=PLAIN_CPU) == "openvino"
    assert engines.resolve_engine("openvino", "bf16", gpu=False, flags=BF16_CPU) == "openvino"
    assert engines.resolve_engine("tf", "bf16", gpu=True, flags=PLAIN_CPU) == "tf"


def test_slow_and_impossible_pairings_are_refused_with_a_hint():
    with pytest.raises(ConfigError, match=r"^--engine tf --precision bf16 without a GPU runs at ~1.06x fp32 .*use --engine auto"):
        engines.resolve_engine("tf", "bf16", gpu=False, flags=BF16_CPU)
    for engine in ("auto", "tf", "openvino"):
        with pytest.raises(ConfigError, match="bf16 needs a CPU with amx_bf16 or avx512_bf16.*use --precision fp32"):
            engines.resolve_engine(engine, "bf16", gpu=False, flags=PLAIN_CPU)
    with pytest.raises(ConfigError, match="--log-mel-on device runs the front end as TensorFlow ops: use --engine tf"):
        engines.resolve_engine("openvino", "fp32", gpu=False, flags=BF16_CPU, log_mel_on="device")
    with pytest.raises(ConfigError, match="unknown engine 'onnx'; known: auto, tf, openvino"):
        engines.resolve_engine("onnx", "fp32")
    with pytest.raises(ConfigError, match="unknown engine 'auto'; known: tf, openvino"):
        engines.check_names(engine="auto", precision="fp32")  # load_embedder takes a real engine
