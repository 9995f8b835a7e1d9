"""The optimizer of SPEC §3 and of the probes: Adam's constants and the learning-rate
schedule, linear warm-up from 0, then cosine decay to 0.

Built from Keras' `CosineDecay` (initial 0, `warmup_target` = peak, `warmup_steps`), which
rebuilds from its `get_config`, so the optimizer checkpoint and config round-trip as is:

    lr(s) = peak · s / W                                   for s < W
    lr(s) = peak · ½ (1 + cos(π · min(s − W, D) / D))      for s ≥ W,   D = total − W

The reference: peak 2e-4, W = 5,000, total 200,000 (D = 195,000). `s` is the optimizer's
step counter before the update, so the first update uses lr(0) = 0, as in Keras.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from musicrep.errors import ConfigError

# Adam's constants (Keras' defaults, which the reference pre-training and probes use).
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-7
PEAK_LR = 2e-4
WARMUP_STEPS = 5_000
TOTAL_STEPS = 200_000

if TYPE_CHECKING:
    import keras


def check_schedule(*, peak_lr: float, warmup_steps: int, total_steps: int) -> None:
    """ConfigError unless peak_lr > 0 and 0 <= warmup_steps < total_steps."""
    if peak_lr <= 0:
        raise ConfigError(f"peak_lr must be > 0, got {peak_lr}")
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ConfigError(
            f"need 0 <= warmup_steps < total_steps, got warmup_steps={warmup_steps}, total_steps={total_steps}"
        )


def warmup_cosine(
    *, peak_lr: float = PEAK_LR, warmup_steps: int = WARMUP_STEPS, total_steps: int = TOTAL_STEPS
) -> keras.optimizers.schedules.CosineDecay:
    """LR rising linearly 0 → `peak_lr` over `warmup_steps`, then cosine to 0 at `total_steps`."""
    import keras  # here, so the constants above are read without loading Keras

    check_schedule(peak_lr=peak_lr, warmup_steps=warmup_steps, total_steps=total_steps)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=peak_lr, decay_steps=total_steps, alpha=0.0
        )
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=total_steps - warmup_steps,
        alpha=0.0,
        warmup_target=peak_lr,
        warmup_steps=warmup_steps,
    )
