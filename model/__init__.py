"""SF-NFNet-F0 (SPEC §2): the network, its projector, exports, pre-training (SPEC §3) and
the MULE weight import.

Importing this package registers the custom layers, so `keras.saving.load_model` can
read our `.keras` files.
"""
from __future__ import annotations

import keras

from musicrep.model.export import load, read_metadata, save
from musicrep.model.projector import projector
from musicrep.model.sf_nfnet import (
    MIN_FRAMES,
    SF_NFNET_VARIANTS,
    SFNFNetConfig,
    build_sf_nfnet,
    stage_activation_stats,
)
from musicrep.model.training import NonFiniteLossError, train
from musicrep.model.training_config import TrainConfig, TrainResult


def sf_nfnet_f0(config: str | SFNFNetConfig = "F0", *, frames: int | None = None) -> keras.Model:
    """SF-NFNet (default F0): [batch, 96, frames(, 1)] log-mel → [batch, 1728] embedding z.

    The model standardises each slice itself (SPEC §1), so feed raw log10(1 + 10⁴·M) values.
    """
    return build_sf_nfnet(config, frames=frames)


__all__ = [
    "MIN_FRAMES",
    "NonFiniteLossError",
    "SF_NFNET_VARIANTS",
    "SFNFNetConfig",
    "TrainConfig",
    "TrainResult",
    "build_sf_nfnet",
    "load",
    "projector",
    "read_metadata",
    "save",
    "sf_nfnet_f0",
    "stage_activation_stats",
    "train",
]
