"""Audio decoding and the log-mel front end of SPEC §1 (pure numpy/PyAV).

The settings they follow are musicrep.contracts.feature_config; the shard records the
features job writes are musicrep.contracts.shards. `decode` loads PyAV on first use
(PEP 562), as log_mel does scipy: ~0.4 CPU-s a process that the features job's workers,
which only receive blocks from their front-end process, never spend.
"""
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FEATURE_VERSION, FeatureConfig
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


def __getattr__(name: str):
    if name == "decode":
        from musicrep.features.audio import decode

        return decode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
