"""SF-NFNet-F0 (SPEC §2): the network, its projector, exports, pre-training (SPEC §3) and
the MULE weight import.

Importing this package is cheap: it loads no TensorFlow or Keras, so a launcher that
only reads a model's sidecar, or checks its options, does not pay for them. Each module
imports what it needs; code should import names from their defining module
(`from musicrep.model.export import load`). The names below stay reachable as
`musicrep.model.NAME` (the README's `import musicrep.model as mm`) and are imported
from their module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

# name -> defining module (PEP 562 lazy attributes)
_EXPORTS = {
    "load": "export",
    "read_metadata": "export",
    "save": "export",
    "projector": "projector",
    "MIN_FRAMES": "sf_nfnet",
    "SF_NFNET_VARIANTS": "sf_nfnet",
    "SFNFNetConfig": "sf_nfnet",
    "build_sf_nfnet": "sf_nfnet",
    "sf_nfnet_f0": "sf_nfnet",
    "stage_activation_stats": "sf_nfnet",
    "NonFiniteLossError": "training",
    "train": "training",
    "TrainConfig": "training_config",
    "TrainResult": "training_config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
