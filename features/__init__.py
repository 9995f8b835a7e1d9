"""Audio decoding and the log-mel front end of SPEC §1 (pure numpy/PyAV).

The settings they follow are musicrep.contracts.feature_config; the shard records the
features job writes are musicrep.contracts.shards. The names below are imported from
their modules on first use, so a launcher that only needs `features.windows` to check a
setting does not load PyAV and scipy.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "DEFAULT_FEATURE_CONFIG": "musicrep.contracts.feature_config",
    "FEATURE_VERSION": "musicrep.contracts.feature_config",
    "FeatureConfig": "musicrep.contracts.feature_config",
    "decode": "musicrep.features.audio",
    "log_mel": "musicrep.features.log_mel",
    "mel_filterbank": "musicrep.features.log_mel",
    "power_spectrogram": "musicrep.features.log_mel",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'musicrep.features' has no attribute {name!r}")


__all__ = sorted(_HOMES)
