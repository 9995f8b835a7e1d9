"""SF-NFNet-F0 (SPEC §2): the network, its projector, exports, pre-training (SPEC §3) and
the MULE weight import.

Importing the package is cheap: launchers that only read an export's sidecar
(musicrep.contracts.sidecar) or pick an engine never load Keras. The names below are
imported from their modules on first use; `musicrep.model.layers` registers the custom
layers `keras.saving.load_model` needs (musicrep.model.export imports it).
"""
from __future__ import annotations

import importlib

_HOMES = {
    "load": "export",
    "save": "export",
    "read_metadata": "export",
    "projector": "projector",
    "MIN_FRAMES": "sf_nfnet",
    "SF_NFNET_VARIANTS": "sf_nfnet",
    "SFNFNetConfig": "sf_nfnet",
    "build_sf_nfnet": "sf_nfnet",
    "stage_activation_stats": "sf_nfnet",
    "NonFiniteLossError": "training",
    "train": "training",
    "TrainConfig": "training_config",
    "TrainResult": "training_config",
}


def __getattr__(name: str):
    if name == "sf_nfnet_f0":  # SF-NFNet-F0 by default: the network of the paper
        return getattr(importlib.import_module("musicrep.model.sf_nfnet"), "build_sf_nfnet")
    if name in _HOMES:
        return getattr(importlib.import_module(f"musicrep.model.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'musicrep.model' has no attribute {name!r}")


__all__ = sorted([*_HOMES, "sf_nfnet_f0"])
