"""Each custom layer against a few lines of numpy on fixed inputs, and config round trips."""
import math

import keras
import numpy as np
import pytest

from musicrep.model import signal
from musicrep.model.layers import (
    ScalarGain,
    ScaledActivation,
    SliceStandardisation,
    SqueezeExcite,
    StochasticDepth,
    WSConv2D,
)

erf = np.vectorize(math.erf)


def numpy_same_conv(x, w, strides, groups):
    """Direct NHWC grouped convolution with Keras/TF "same" padding (extra pad at the end)."""
    batch, height, width, cin = x.shape
    kh, kw, cin_g, cout = w.shape
    out_h, out_w = -(-height // strides[0]), -(-width // strides[1])
    pad_h = max((out_h - 1) * strides[0] + kh - height, 0)
    pad_w = max((out_w - 1) * strides[1] + kw - width, 0)
    xp = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((batch, out_h, out_w, cout))
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[..., g * cin_g : (g + 1) * cin_g]
        ws = w[..., g * cout_g : (g + 1) * cout_g]
        for i in range(out_h):
            for j in range(out_w):
                patch = xs[:, i * strides[0] : i * strides[0] + kh, j * strides[1] : j * strides[1] + kw, :]
                out[:, i, j, g * cout_g : (g + 1) * cout_g] = np.einsum("bhwc,hwco->bo", patch, ws)
    return out


@pytest.mark.parametrize("kernel, strides, groups", [((3, 1), (2, 8), 1), ((1, 3), (2, 1), 4), ((3, 3), (1, 1), 2)])
def test_wsconv_matches_numpy(rng, kernel, strides, groups):
    x = rng.standard_normal((2, 7, 17, 8)).astype("float32")
    layer = WSConv2D(12, kernel, strides=strides, groups=groups)
    layer.build(x.shape)
    w = rng.standard_normal(layer.kernel.shape) * 3.0 + 0.5
    bias = rng.standard_normal(12)
    gain = rng.uniform(0.5, 2.0, 12)
    layer.set_weights([w, bias, gain])
    n = w.shape[0] * w.shape[1] * w.shape[2]
    w_hat = gain * (w - w.mean(axis=(0, 1, 2))) / np.sqrt(np.maximum(n * w.var(axis=(0, 1, 2)), 1e-4))
    expected = numpy_same_conv(x.astype("float64"), w_hat, strides, groups) + bias
    np.testing.assert_allclose(np.asarray(layer(x)), expected, atol=2e-5, rtol=1e-5)
    # Standardised kernel has zero mean and unit fan-in norm per channel (before the gain).
    standardised = np.asarray(layer.standardised_kernel()) / gain
    np.testing.assert_allclose(standardised.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose((standardised**2).sum(axis=(0, 1, 2)), 1.0, rtol=1e-5)


def test_wsconv_floor_applies_to_a_constant_kernel():
    layer = WSConv2D(1, (1, 1))
    layer.build((1, 1, 1, 2))
    layer.set_weights([np.full((1, 1, 2, 1), 0.3), np.zeros(1), np.ones(1)])
    # var = 0 → scale 1/sqrt(1e-4) on a zero-centred kernel: output exactly 0, never NaN.
    assert np.asarray(layer(np.ones((1, 1, 1, 2), "float32"))).tolist() == [[[[0.0]]]]


def test_phi_is_scaled_exact_gelu(rng):
    x = np.array([-4.0, -1.5, -0.3, 0.0, 0.2, 1.0, 3.7], dtype="float32")
    expected = 1.7015043497085571 * x * 0.5 * (1.0 + erf(x / np.sqrt(2.0)))
    np.testing.assert_allclose(np.asarray(ScaledActivation()(x)), expected, rtol=1e-6, atol=1e-7)
    # The gain's purpose: unit variance for standard normal input (Monte Carlo, 1e6 samples:
    # the standard error of the variance is ~0.002).
    z = rng.standard_normal(1_000_000).astype("float32")
    assert np.var(np.asarray(ScaledActivation()(z))) == pytest.approx(1.0, abs=0.01)


def test_squeeze_excite_matches_numpy(rng):
    x = rng.standard_normal((3, 4, 5, 8)).astype("float32")
    layer = SqueezeExcite()
    layer.build(x.shape)
    w1, b1, w2, b2 = (rng.standard_normal(w.shape) for w in layer.weights)
    layer.set_weights([w1, b1, w2, b2])
    pooled = x.astype("float64").mean(axis=(1, 2))
    scale = 1.0 / (1.0 + np.exp(-(np.maximum(pooled @ w1 + b1, 0.0) @ w2 + b2)))
    expected = x * 2.0 * scale[:, None, None, :]
    assert w1.shape == (8, 4)
    np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5, atol=1e-6)


def test_slice_standardisation_matches_numpy(rng):
    x = (rng.standard_normal((3, 96, 50, 1)) * 2.0 + 5.0).astype("float32")
    x[2] = 1.25  # a constant slice: the std floor keeps it finite
    flat = x.reshape(3, -1).astype("float64")
    expected = (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, keepdims=True), 0.01)
    out = np.asarray(SliceStandardisation()(x)).reshape(3, -1)
    np.testing.assert_allclose(out, expected, atol=2e-5)
    assert np.all(out[2] == 0.0)


def test_stochastic_depth_drops_whole_examples_without_rescaling():
    shortcut = np.zeros((4000, 2, 2, 3), "float32")
    residual = np.ones((4000, 2, 2, 3), "float32")
    layer = StochasticDepth(0.25, seed=7)
    np.testing.assert_array_equal(np.asarray(layer([shortcut, residual])), 1.0)  # inference: full residual
    out = np.asarray(layer([shortcut, residual], training=True))
    per_example = out.reshape(4000, -1)
    assert set(np.unique(per_example)) == {0.0, 1.0}  # kept residuals are not divided by 0.75
    assert np.all(per_example.min(1) == per_example.max(1))
    assert per_example[:, 0].mean() == pytest.approx(0.75, abs=0.03)  # ±4.4σ for n = 4000


def test_scalar_gain_learnable_and_constant():
    x = np.full((2, 3), 2.0, "float32")
    learnable = ScalarGain(0.0, trainable_gain=True)
    assert np.asarray(learnable(x)).tolist() == [[0.0] * 3] * 2
    assert [tuple(w.shape) for w in learnable.trainable_weights] == [()]
    constant = ScalarGain(0.5, trainable_gain=False)
    assert np.asarray(constant(x)).tolist() == [[1.0] * 3] * 2
    assert constant.weights == []


def test_beta_table_matches_spec():
    spec = [0.98058, 0.96225, 0.94491, 0.92848, 0.91287, 0.89803]
    for stage in (2, 3, 4):
        ours = [signal.block_beta(stage=stage, block=k) for k in range(6)]
        np.testing.assert_allclose(ours, spec, atol=5e-6)
    assert [signal.block_beta(stage=s, block=0) for s in (1, 2, 3, 4)] == pytest.approx([1.0] + [spec[0]] * 3)
    assert signal.stochastic_depth_rate(global_block=11, n_blocks=12, max_rate=0.1) == pytest.approx(0.1 * 11 / 12)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (WSConv2D(6, (1, 3), strides=(2, 1), groups=2, name="conv"), (2, 6, 5, 4)),
        (ScaledActivation(name="phi"), (2, 3)),
        (ScalarGain(0.25, trainable_gain=True, name="gain"), (2, 3)),
        (ScalarGain(0.9, trainable_gain=False, name="beta"), (2, 3)),
        (SqueezeExcite(name="se"), (2, 3, 4, 6)),
        (SliceStandardisation(floor=0.02, name="std"), (2, 96, 5, 1)),
    ],
)
def test_layer_config_round_trip(rng, layer, shape):
    x = rng.standard_normal(shape).astype("float32")
    expected = np.asarray(layer(x))
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    if not clone.built:  # serialisation keeps the build config of built layers
        clone.build(shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(np.asarray(clone(x)), expected)


def test_stochastic_depth_config_round_trip():
    layer = StochasticDepth(0.05, seed=3, name="out")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, StochasticDepth) and clone.get_config() == layer.get_config()
    assert clone.drop_rate == 0.05 and clone.seed == 3
