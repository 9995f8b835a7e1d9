"""Custom Keras 3 layers of SF-NFNet-F0 (SPEC §2), registered for `.keras` round trips.

Every layer keeps its maths in one `call` and its constructor arguments in `get_config`,
so a saved model rebuilds without custom_objects once this module is imported
(`musicrep.model.export` imports it; `import musicrep.model` alone loads no Keras).
"""
from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from musicrep.errors import ConfigError
from musicrep.model import signal

PACKAGE = "musicrep"


def _reference_conv_initializer() -> keras.initializers.Initializer:
    # MULE/DeepMind draw the raw kernel from an untruncated fan-in normal; the kernel is
    # standardised at every call anyway, so only its direction matters.
    return keras.initializers.VarianceScaling(1.0, mode="fan_in", distribution="untruncated_normal")


@keras.saving.register_keras_serializable(package=PACKAGE)
class WSConv2D(keras.layers.Layer):
    """Conv2D ("same" padding, channels last) whose kernel is re-standardised at every call.

    Ŵ = gain · (W − mean) / sqrt(max(N · var, ε)) per output channel, mean and population
    variance over (kh, kw, Cin/groups), N = kh·kw·Cin/groups. Weights, in order: kernel
    (kh, kw, Cin/groups, filters), bias, gain (init 1). The standardisation runs in
    float32 even under a mixed-precision policy (variables are not autocast), so bf16
    only changes the convolution itself. Inference may fold it (`fold_standardisation`).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: tuple[int, int],
        *,
        strides: tuple[int, int] = (1, 1),
        groups: int = 1,
        use_bias: bool = True,
        epsilon: float = signal.WS_EPSILON,
        kernel_initializer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(autocast=False, **kwargs)
        self.filters = filters
        self.kernel_size = tuple(kernel_size)
        self.strides = tuple(strides)
        self.groups = groups
        self.use_bias = use_bias
        self.epsilon = epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer or _reference_conv_initializer())
        self._folded_kernel = None  # set by fold_standardisation, never saved
        self._plain_convolution = False

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        in_channels = int(input_shape[-1])
        if in_channels % self.groups or self.filters % self.groups:
            raise ConfigError(
                f"{self.name}: {in_channels} → {self.filters} channels do not split into {self.groups} groups"
            )
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*self.kernel_size, in_channels // self.groups, self.filters),
            initializer=self.kernel_initializer,
        )
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")
        self.gain = self.add_weight(name="gain", shape=(self.filters,), initializer="ones")

    def standardised_kernel(self) -> Any:
        """The kernel actually convolved (float32), shape (kh, kw, Cin/groups, filters)."""
        kernel = ops.cast(self.kernel, "float32")
        fan_in = math.prod(self.kernel.shape[:-1])
        mean = ops.mean(kernel, axis=(0, 1, 2), keepdims=True)
        var = ops.var(kernel, axis=(0, 1, 2), keepdims=True)
        scale = ops.rsqrt(ops.maximum(var * fan_in, self.epsilon)) * ops.cast(self.gain, "float32")
        return (kernel - mean) * scale

    def fold_standardisation(self, *, plain_convolution: bool = False) -> None:
        """Inference only: standardise the kernel once; later calls convolve that constant.

        Standardising every kernel of F0 costs ~0.25 s per call on 2 CPU cores (~10 % of
        a batch of 32 in fp32, more in bf16). `plain_convolution` convolves with one
        `tf.nn.convolution` node instead of Keras' `ops.conv`, which runs grouped
        convolutions on CPU inside a nested XLA function (TensorFlow's CPU kernels reject
        groups): graph converters (OpenVINO) map the plain node onto their own grouped
        convolution and import F0 in ~10 s instead of ~90 s. Not for TensorFlow's own CPU
        runtime, whose fused conv + bias kernel has no grouped variant.
        """
        import tensorflow as tf

        kernel = keras.ops.convert_to_numpy(self.standardised_kernel())
        self._folded_kernel = tf.cast(tf.constant(kernel), self.compute_dtype)
        self._plain_convolution = plain_convolution

    def call(self, inputs: Any) -> Any:
        inputs = ops.cast(inputs, self.compute_dtype)
        if self._folded_kernel is None:
            kernel = ops.cast(self.standardised_kernel(), self.compute_dtype)
        else:
            kernel = self._folded_kernel
        if self._plain_convolution:
            import tensorflow as tf

            outputs = tf.nn.convolution(inputs, kernel, strides=self.strides, padding="SAME")
        else:
            # ops.conv infers the groups from Cin / kernel's input depth.
            outputs = ops.conv(inputs, kernel, strides=self.strides, padding="same")
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, self.compute_dtype)
        return outputs

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        batch, height, width, _ = input_shape
        return (
            batch,
            None if height is None else -(-height // self.strides[0]),
            None if width is None else -(-width // self.strides[1]),
            self.filters,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "groups": self.groups,
            "use_bias": self.use_bias,
            "epsilon": self.epsilon,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaledActivation(keras.layers.Layer):
    """φ(x) = gain · GELU(x) with the exact (erf) GELU; gain makes Var φ(z) = 1 for z ~ N(0, 1)."""

    def __init__(self, gain: float = signal.PHI_GAIN, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gain = gain

    def call(self, inputs: Any) -> Any:
        return ops.gelu(inputs, approximate=False) * ops.cast(self.gain, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gain": self.gain}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScalarGain(keras.layers.Layer):
    """Multiplies by one scalar: learnable (the skip gain, init 0) or a frozen constant (β, α)."""

    def __init__(self, init_value: float = 0.0, trainable_gain: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_value = init_value
        self.trainable_gain = trainable_gain

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if self.trainable_gain:
            self.gain = self.add_weight(
                name="gain", shape=(), initializer=keras.initializers.Constant(self.init_value)
            )

    def call(self, inputs: Any) -> Any:
        gain = self.gain if self.trainable_gain else self.init_value
        return inputs * ops.cast(gain, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "init_value": self.init_value,
            "trainable_gain": self.trainable_gain,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(keras.layers.Layer):
    """shortcut + residual, where training drops the residual per example with `drop_rate`.

    Like the reference (MULE `StochDepth(scale_during_test=False)`), kept residuals are not
    rescaled by 1/(1 − rate) and inference always adds the full residual.
    """

    def __init__(self, drop_rate: float = 0.0, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drop_rate = drop_rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs: list[Any], training: bool | None = None) -> Any:
        shortcut, residual = inputs
        if training and self.drop_rate > 0.0:
            batch = ops.shape(residual)[0]
            keep = keras.random.uniform(
                (batch, 1, 1, 1), seed=self.seed_generator, dtype=residual.dtype
            ) >= ops.cast(self.drop_rate, residual.dtype)
            residual = residual * ops.cast(keep, residual.dtype)
        return shortcut + residual

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]) -> tuple[int | None, ...]:
        return input_shape[0]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "drop_rate": self.drop_rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(keras.layers.Layer):
    """x · SE_GAIN · sigmoid(W2 · relu(W1 · mean_{F,T}(x) + b1) + b2), hidden = C · ratio."""

    def __init__(self, ratio: float = 0.5, gain: float = signal.SE_GAIN, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ratio = ratio
        self.gain = gain

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        channels = int(input_shape[-1])
        hidden = int(channels * self.ratio)
        # Dense defaults (Glorot uniform, zero bias), as the reference's Dense layers.
        self.squeeze_kernel = self.add_weight(name="squeeze_kernel", shape=(channels, hidden), initializer="glorot_uniform")
        self.squeeze_bias = self.add_weight(name="squeeze_bias", shape=(hidden,), initializer="zeros")
        self.excite_kernel = self.add_weight(name="excite_kernel", shape=(hidden, channels), initializer="glorot_uniform")
        self.excite_bias = self.add_weight(name="excite_bias", shape=(channels,), initializer="zeros")

    def call(self, inputs: Any) -> Any:
        pooled = ops.mean(inputs, axis=(1, 2))
        hidden = ops.relu(ops.matmul(pooled, self.squeeze_kernel) + self.squeeze_bias)
        scale = ops.sigmoid(ops.matmul(hidden, self.excite_kernel) + self.excite_bias)
        return inputs * (self.gain * scale)[:, None, None, :]

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ratio": self.ratio, "gain": self.gain}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SliceStandardisation(keras.layers.Layer):
    """(x − mean) / max(std, floor) per slice, mean and population std over all non-batch values (SPEC §1)."""

    def __init__(self, floor: float = signal.SLICE_STD_FLOOR, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.floor = floor

    def call(self, inputs: Any) -> Any:
        axes = tuple(range(1, len(inputs.shape)))
        centred = inputs - ops.mean(inputs, axis=axes, keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(centred), axis=axes, keepdims=True))
        return centred / ops.maximum(std, ops.cast(self.floor, inputs.dtype))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "floor": self.floor}
