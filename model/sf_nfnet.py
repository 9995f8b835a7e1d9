"""SF-NFNet: the two-pathway (slow/fast) normaliser-free ResNet of SPEC §2, as a function of a config.

Layer names are part of the export format (weights load by name), so they are frozen:

    standardise
    {slow,fast}_stem_conv{1..4}, {slow,fast}_stem_act{1..3}
    fusion{s}_time_conv, fusion{s}_proj_conv, fusion{s}_concat                (s = 1..4)
    {path}_stage{s}_block{k}_{preact,beta,conv1..4,act1..3,se,skip_gain,alpha,
                             pool,shortcut,out}                            (k = 0-based)
    slow_pool, fast_pool, embedding_concat, embedding

Stages are numbered 1–4 and blocks from 0, as in SPEC §2 ("block k of stages 2–4").
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import keras

from musicrep.errors import ConfigError
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
from musicrep.model import signal
from musicrep.model.layers import (
    ScalarGain,
    ScaledActivation,
    SliceStandardisation,
    SqueezeExcite,
    StochasticDepth,
    WSConv2D,
)

logger = logging.getLogger(__name__)

# The network takes the bands of the front end it was trained on (FeatureConfig owns the
# number); the released weights' kernel shapes fix it at the default's 96.
N_MELS = DEFAULT_FEATURE_CONFIG.n_mels
# (freq, time) kernels and strides of the stems; the first layer integrates the input striding.
SLOW_STEM = (((3, 1), (2, 8)), ((3, 1), (1, 1)), ((3, 1), (1, 1)), ((3, 3), (2, 2)))
FAST_STEM = (((3, 3), (2, 2)), ((3, 3), (1, 1)), ((3, 3), (1, 1)), ((3, 3), (2, 2)))
# Fast → slow fusion: a time-strided conv matches the slow path's frame rate (4× lower).
FUSION_KERNEL = (1, 7)
FUSION_STRIDES = (1, 4)
# Total time stride of both paths: shorter inputs leave the slow path a single padded frame.
MIN_FRAMES = 16


@dataclasses.dataclass(frozen=True)
class SFNFNetConfig:
    """Every width and depth of one SF-NFNet variant; the block code is shared.

    Attributes:
        name: variant name, recorded in exports.
        slow_stem_widths: output channels of the 4 slow stem convs.
        fast_stem_widths: output channels of the 4 fast stem convs.
        slow_widths: output channels of the slow stages (the last is the slow embedding part).
        fast_widths: output channels of the fast stages (the last is the fast embedding part).
        depths: blocks per stage, shared by both paths.
        fusion_time_widths: output channels of the 1×7 fusion conv before each slow stage.
            The reference widens the fast stem's output in the first fusion (16 → 32 for F0)
            and keeps the width afterwards; the released weights have these shapes.
        fusion_widths: output channels of the 1×1 fusion conv, concatenated after the slow tensor.
        slow_group_width / fast_group_width: channels per group of the grouped convs.
        alpha: residual branch scale.
        stochastic_depth_rate: drop rate of the last block; block i drops rate·i/n_blocks.
    """

    name: str
    slow_stem_widths: tuple[int, int, int, int]
    fast_stem_widths: tuple[int, int, int, int]
    slow_widths: tuple[int, int, int, int]
    fast_widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    fusion_time_widths: tuple[int, int, int, int]
    fusion_widths: tuple[int, int, int, int]
    slow_group_width: int
    fast_group_width: int
    alpha: float = signal.ALPHA
    stochastic_depth_rate: float = 0.1

    def __post_init__(self) -> None:
        for path, widths, group in (
            ("slow", self.slow_widths, self.slow_group_width),
            ("fast", self.fast_widths, self.fast_group_width),
        ):
            for width in widths:
                if width % 2 or (width // 2) % group:
                    raise ConfigError(
                        f"{self.name}: {path} width {width} needs a bottleneck {width // 2} "
                        f"divisible by the group width {group}"
                    )
        if min(self.depths) < 1:
            raise ConfigError(f"{self.name}: every stage needs a block, got depths {self.depths}")

    @property
    def embedding_size(self) -> int:
        return self.slow_widths[-1] + self.fast_widths[-1]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SFNFNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


SF_NFNET_VARIANTS: dict[str, SFNFNetConfig] = {
    # SPEC §2, the released SF-NFNet-F0 (62,345,742 parameters).
    "F0": SFNFNetConfig(
        name="F0",
        slow_stem_widths=(16, 32, 64, 128),
        fast_stem_widths=(2, 4, 8, 16),
        slow_widths=(256, 512, 1536, 1536),
        fast_widths=(32, 64, 192, 192),
        depths=(1, 2, 6, 3),
        fusion_time_widths=(32, 32, 64, 192),
        fusion_widths=(128, 256, 512, 3072),
        slow_group_width=128,
        fast_group_width=16,
    ),
    # Same blocks, narrower and shallower: for tests and the demo (< 1 M parameters).
    "tiny": SFNFNetConfig(
        name="tiny",
        slow_stem_widths=(8, 8, 16, 32),
        fast_stem_widths=(2, 4, 4, 8),
        slow_widths=(64, 96, 128, 192),
        fast_widths=(8, 16, 16, 32),
        depths=(1, 1, 2, 1),
        fusion_time_widths=(8, 8, 16, 16),
        fusion_widths=(32, 48, 64, 96),
        slow_group_width=16,
        fast_group_width=4,
    ),
}


def resolve_config(config: str | SFNFNetConfig) -> SFNFNetConfig:
    """A variant name or a config → the config; unknown names raise ConfigError."""
    if isinstance(config, SFNFNetConfig):
        return config
    if config not in SF_NFNET_VARIANTS:
        raise ConfigError(f"unknown SF-NFNet variant {config!r}; known: {sorted(SF_NFNET_VARIANTS)}")
    return SF_NFNET_VARIANTS[config]


def apply_stem(x: Any, *, widths: tuple[int, ...], layout: tuple, name: str) -> Any:
    """Four WSConvs, φ after all but the last (the next block applies φ to its input)."""
    for index, (width, (kernel, strides)) in enumerate(zip(widths, layout), start=1):
        x = WSConv2D(width, kernel, strides=strides, name=f"{name}_conv{index}")(x)
        if index < len(widths):
            x = ScaledActivation(name=f"{name}_act{index}")(x)
    return x


def apply_nf_block(
    x: Any,
    *,
    width: int,
    freq_stride: int,
    group_width: int,
    beta: float,
    alpha: float,
    drop_rate: float,
    transition: bool,
    name: str,
) -> Any:
    """One NF bottleneck block: out = shortcut + α · gain · SE(convs(β · φ(x))).

    A transition block (first of each stage) takes its shortcut from h = β·φ(x) through an
    optional 2× frequency average pool and a 1×1 WSConv; other blocks use x itself.
    """
    h = ScaledActivation(name=f"{name}_preact")(x)
    h = ScalarGain(beta, trainable_gain=False, name=f"{name}_beta")(h)
    bottleneck = width // 2
    groups = bottleneck // group_width
    convs = (  # (width, kernel (freq, time), strides, groups)
        (bottleneck, (1, 1), (1, 1), 1),
        (bottleneck, (1, 3), (freq_stride, 1), groups),
        (bottleneck, (3, 1), (1, 1), groups),
        (width, (1, 1), (1, 1), 1),
    )
    residual = h
    for index, (filters, kernel, strides, conv_groups) in enumerate(convs, start=1):
        residual = WSConv2D(filters, kernel, strides=strides, groups=conv_groups, name=f"{name}_conv{index}")(residual)
        if index < len(convs):
            residual = ScaledActivation(name=f"{name}_act{index}")(residual)
    residual = SqueezeExcite(name=f"{name}_se")(residual)
    residual = ScalarGain(0.0, trainable_gain=True, name=f"{name}_skip_gain")(residual)
    residual = ScalarGain(alpha, trainable_gain=False, name=f"{name}_alpha")(residual)
    if transition:
        shortcut = h
        if freq_stride > 1:
            shortcut = keras.layers.AveragePooling2D(
                (freq_stride, 1), strides=(freq_stride, 1), padding="same", name=f"{name}_pool"
            )(shortcut)
        shortcut = WSConv2D(width, (1, 1), name=f"{name}_shortcut")(shortcut)
    else:
        shortcut = x
    return StochasticDepth(drop_rate, name=f"{name}_out")([shortcut, residual])


def apply_fusion(slow: Any, fast: Any, *, time_width: int, width: int, name: str) -> Any:
    """Fast → slow: 1×7 time-strided WSConv, 1×1 WSConv (both linear), concatenated after slow."""
    fast = WSConv2D(time_width, FUSION_KERNEL, strides=FUSION_STRIDES, name=f"{name}_time_conv")(fast)
    fast = WSConv2D(width, (1, 1), name=f"{name}_proj_conv")(fast)
    return keras.layers.Concatenate(axis=-1, name=f"{name}_concat")([slow, fast])


def stage_output_names(config: SFNFNetConfig) -> list[str]:
    """Names of the layers ending each stage of each path, in order (for activation statistics)."""
    names = []
    for stage, depth in enumerate(config.depths, start=1):
        for path in ("slow", "fast"):
            names.append(f"{path}_stage{stage}_block{depth - 1}_out")
    return names


def build_sf_nfnet(config: str | SFNFNetConfig = "F0", *, frames: int | None = None) -> keras.Model:
    """Build SF-NFNet for [batch, 96, frames(, 1)] log-mel slices → [batch, embedding_size].

    `frames=None` accepts any length ≥ MIN_FRAMES (global pooling); a fixed length only
    helps static-shape tools (FLOP counts, XLA). The input may omit the channel axis.
    """
    config = resolve_config(config)
    if frames is not None and frames < MIN_FRAMES:
        raise ConfigError(f"frames must be ≥ {MIN_FRAMES} (the total time stride), got {frames}")
    inputs = keras.Input(shape=(N_MELS, frames, 1), name="log_mel")
    # Float32 regardless of the global policy: slices standardise before any bf16 cast.
    x = SliceStandardisation(name="standardise", dtype="float32")(inputs)
    slow = apply_stem(x, widths=config.slow_stem_widths, layout=SLOW_STEM, name="slow_stem")
    fast = apply_stem(x, widths=config.fast_stem_widths, layout=FAST_STEM, name="fast_stem")
    n_blocks = sum(config.depths)
    global_block = 0
    for stage, depth in enumerate(config.depths, start=1):
        slow = apply_fusion(
            slow,
            fast,
            time_width=config.fusion_time_widths[stage - 1],
            width=config.fusion_widths[stage - 1],
            name=f"fusion{stage}",
        )
        # Order per stage as the reference: fuse, the slow stage, then the fast stage.
        for path, widths, group_width in (
            ("slow", config.slow_widths, config.slow_group_width),
            ("fast", config.fast_widths, config.fast_group_width),
        ):
            x = slow if path == "slow" else fast
            for block in range(depth):
                x = apply_nf_block(
                    x,
                    width=widths[stage - 1],
                    freq_stride=2 if stage > 1 and block == 0 else 1,
                    group_width=group_width,
                    beta=signal.block_beta(stage=stage, block=block, alpha=config.alpha),
                    alpha=config.alpha,
                    drop_rate=signal.stochastic_depth_rate(
                        global_block=global_block + block,
                        n_blocks=n_blocks,
                        max_rate=config.stochastic_depth_rate,
                    ),
                    transition=block == 0,
                    name=f"{path}_stage{stage}_block{block}",
                )
            if path == "slow":
                slow = x
            else:
                fast = x
        global_block += depth
    # The head runs in float32 so the embedding has one dtype under every policy.
    pooled = [
        keras.layers.GlobalAveragePooling2D(name="slow_pool", dtype="float32")(slow),
        keras.layers.GlobalAveragePooling2D(name="fast_pool", dtype="float32")(fast),
    ]
    z = keras.layers.Concatenate(name="embedding_concat", dtype="float32")(pooled)
    z = ScaledActivation(name="embedding", dtype="float32")(z)
    model = keras.Model(inputs, z, name=f"sf_nfnet_{config.name.lower()}")
    logger.info("built SF-NFNet %s: %d parameters", config.name, model.count_params())
    return model



def sf_nfnet_f0(config: str | SFNFNetConfig = "F0", *, frames: int | None = None) -> keras.Model:
    """SF-NFNet (default F0): [batch, 96, frames(, 1)] log-mel → [batch, 1728] embedding z.

    The model standardises each slice itself (SPEC §1), so feed raw log10(1 + 10⁴·M) values.
    """
    return build_sf_nfnet(config, frames=frames)

def stage_activation_stats(model: keras.Model, log_mel: Any, config: str | SFNFNetConfig = "F0") -> dict[str, dict[str, float]]:
    """Mean and variance of the stem outputs and of every stage output for one input batch.

    The signal-propagation check of NFNets. At initialisation (skip gains 0) a stage's
    output is its transition shortcut, a unit-gain WSConv of the 2× frequency-pooled
    β·φ(x); the pool halves spatially white noise, so on white noise each transition of
    stages 2–4 shrinks the variance by about 2× — as in the reference, whose released
    weights depend on exactly this maths.
    """
    config = resolve_config(config)
    names = ["slow_stem_conv4", "fast_stem_conv4", *stage_output_names(config)]
    probe = keras.Model(model.input, [model.get_layer(name).output for name in names])
    outputs = probe(log_mel, training=False)
    stats = {}
    for name, value in zip(names, outputs):
        value = keras.ops.convert_to_numpy(value).astype("float64")
        stats[name] = {"mean": float(value.mean()), "variance": float(value.var())}
    return stats
