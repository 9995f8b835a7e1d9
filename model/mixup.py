"""Mixup on log-mel batches, as SPEC §3 specifies it for both pre-training objectives.

The paper mixes within the batch: shuffle the batch and add the shuffled examples to the
originals with gains drawn from Beta(α = 5, β = 2), one gain per example. The exact formula
was not released; we use the convex combination

    x'_i = λ_i · x_i + (1 − λ_i) · x_{π(i)},      y'_i = λ_i · y_i + (1 − λ_i) · y_{π(i)},

with λ_i ~ Beta(5, 2) (mean 5/7 ≈ 0.71, so the original dominates) and π a uniformly random
permutation of the batch (an example may be paired with itself). For SimCLR each view is
mixed independently (its own λ and π), so the two views of a pair see different partners.
All randomness is stateless, drawn from an explicit seed, so a run is reproducible and
resumes exactly.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from musicrep.errors import ConfigError
from musicrep.model.sampling import MIXUP_ALPHA, MIXUP_BETA


@dataclasses.dataclass(frozen=True)
class MixupDraw:
    """The random part of one mixup: per-example gains λ [B] float32 and a permutation π [B] int32."""

    gains: tf.Tensor
    permutation: tf.Tensor


def mix(x: tf.Tensor, gains: tf.Tensor, permutation: tf.Tensor) -> tf.Tensor:
    """λ_i · x_i + (1 − λ_i) · x_{π(i)} for a batch x [B, ...]; gains [B], permutation [B]."""
    x = tf.convert_to_tensor(x)
    gains = tf.cast(gains, x.dtype)
    gains = tf.reshape(gains, tf.concat([tf.shape(gains), tf.ones([tf.rank(x) - 1], tf.int32)], axis=0))
    return gains * x + (1.0 - gains) * tf.gather(x, permutation)


def draw_mixup(
    batch_size: tf.Tensor | int, seed: tf.Tensor, *, alpha: float = MIXUP_ALPHA, beta: float = MIXUP_BETA
) -> MixupDraw:
    """Stateless draw of λ ~ Beta(alpha, beta) per example and a random permutation of the batch.

    Beta(α, β) = G_α / (G_α + G_β) for independent unit-scale gamma variables.
    `seed` is a shape-[2] integer tensor (tf.random stateless convention).
    """
    if alpha <= 0 or beta <= 0:
        raise ConfigError(f"mixup Beta parameters must be > 0, got alpha={alpha}, beta={beta}")
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
    shape = tf.reshape(tf.cast(batch_size, tf.int32), [1])
    g_alpha = tf.random.stateless_gamma(shape, seed=seeds[0], alpha=alpha, dtype=tf.float32)
    g_beta = tf.random.stateless_gamma(shape, seed=seeds[1], alpha=beta, dtype=tf.float32)
    keys = tf.random.stateless_uniform(shape, seed=seeds[2], dtype=tf.float32)
    return MixupDraw(gains=g_alpha / (g_alpha + g_beta), permutation=tf.argsort(keys))


def mixup(
    x: tf.Tensor,
    seed: tf.Tensor,
    *,
    labels: tf.Tensor | None = None,
    alpha: float = MIXUP_ALPHA,
    beta: float = MIXUP_BETA,
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Mixes a batch x [B, ...] (and its labels [B, K], with the same λ and π) within itself."""
    draw = draw_mixup(tf.shape(x)[0], seed, alpha=alpha, beta=beta)
    mixed_labels = None if labels is None else mix(labels, draw.gains, draw.permutation)
    return mix(x, draw.gains, draw.permutation), mixed_labels
