"""Audio decoding and the log-mel front end of SPEC §1 (pure numpy/PyAV).

The settings they follow are musicrep.contracts.feature_config; the shard records the
features job writes are musicrep.contracts.shards.
"""
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FEATURE_VERSION, FeatureConfig
from musicrep.features.audio import decode
from musicrep.features.log_mel import log_mel, mel_filterbank, power_spectrogram

__all__ = [
    "DEFAULT_FEATURE_CONFIG",
    "FEATURE_VERSION",
    "FeatureConfig",
    "decode",
    "log_mel",
    "mel_filterbank",
    "power_spectrogram",
]
