"""Audio decoding, the log-mel front end of SPEC §1, and the shard schema.

`decode` and `log_mel` are pure numpy/PyAV; the shard helpers are loaded only when used
(`serialize_record` needs no TensorFlow; `read_shards`, `parse_record` and `parse_example` import it).
"""
from musicrep.features.audio import decode
from musicrep.features.config import DEFAULT_FEATURE_CONFIG, FEATURE_VERSION, FeatureConfig
from musicrep.features.log_mel import log_mel, mel_filterbank, power_spectrogram


def __getattr__(name: str):
    if name in ("read_shards", "FeatureRecord", "serialize_record", "parse_record", "parse_example"):
        from musicrep.features import shards

        return getattr(shards, name)
    raise AttributeError(f"module 'musicrep.features' has no attribute {name!r}")


__all__ = [
    "DEFAULT_FEATURE_CONFIG",
    "FEATURE_VERSION",
    "FeatureConfig",
    "FeatureRecord",
    "decode",
    "log_mel",
    "mel_filterbank",
    "parse_example",
    "parse_record",
    "power_spectrogram",
    "read_shards",
    "serialize_record",
]
