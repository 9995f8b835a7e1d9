"""The log-mel TFRecord schema, defined once for the writer (features job) and the readers.

One `tf.train.Example` per track. `log_mel` is raw little-endian bytes of a row-major
[n_frames, n_mels] array in `log_mel_dtype` (float16 by default: log-mel values lie in
[0, ~6], where float16 keeps ~3 significant digits and halves the storage).
This is the only module of features/ that imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from musicrep.errors import ConfigError

SCHEMA_VERSION = "musicrep-shard-1"
SHARD_SUFFIX = ".tfrecord.gz"
LOG_MEL_DTYPES = ("float16", "float32")

_BYTES = ("track_id", "uri", "content_sha256", "log_mel", "log_mel_dtype", "feature_config", "feature_version")
_INTS = ("sample_rate", "n_mels", "n_frames")
_FLOATS = ("duration_s",)

FEATURE_SPEC: dict[str, tf.io.FixedLenFeature] = {
    **{key: tf.io.FixedLenFeature([], tf.string) for key in _BYTES},
    **{key: tf.io.FixedLenFeature([], tf.int64) for key in _INTS},
    **{key: tf.io.FixedLenFeature([], tf.float32) for key in _FLOATS},
}


@dataclasses.dataclass(frozen=True)
class FeatureRecord:
    """One track's features as stored in a shard; `log_mel` is [n_frames, n_mels] float32."""

    track_id: str
    uri: str
    content_sha256: str
    sample_rate: int
    duration_s: float
    log_mel: np.ndarray
    feature_config: str
    feature_version: str

    @property
    def n_frames(self) -> int:
        return int(self.log_mel.shape[0])

    @property
    def n_mels(self) -> int:
        return int(self.log_mel.shape[1])


def serialize_record(record: FeatureRecord, *, dtype: str = "float16") -> bytes:
    """The serialized `tf.train.Example` of one track (the shard format)."""
    if dtype not in LOG_MEL_DTYPES:
        raise ConfigError(f"log-mel dtype must be one of {LOG_MEL_DTYPES}, got {dtype!r}")
    payload = np.ascontiguousarray(record.log_mel, dtype=np.dtype(dtype).newbyteorder("<"))
    values: dict[str, Any] = {
        "track_id": record.track_id.encode(),
        "uri": record.uri.encode(),
        "content_sha256": record.content_sha256.encode(),
        "log_mel": payload.tobytes(),
        "log_mel_dtype": dtype.encode(),
        "feature_config": record.feature_config.encode(),
        "feature_version": record.feature_version.encode(),
        "sample_rate": record.sample_rate,
        "n_mels": record.n_mels,
        "n_frames": record.n_frames,
        "duration_s": record.duration_s,
    }
    feature = {}
    for key, value in values.items():
        if key in _BYTES:
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        elif key in _INTS:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_record(serialized: bytes) -> FeatureRecord:
    """Parses one serialized Example back into a FeatureRecord (no graph; for Beam DoFns)."""
    feature = tf.train.Example.FromString(serialized).features.feature
    missing = [key for key in FEATURE_SPEC if key not in feature]
    if missing:
        raise ConfigError(f"not a musicrep feature record: missing keys {missing}")

    def text(key: str) -> str:
        return feature[key].bytes_list.value[0].decode()

    n_frames = feature["n_frames"].int64_list.value[0]
    n_mels = feature["n_mels"].int64_list.value[0]
    log_mel = _decode_log_mel(feature["log_mel"].bytes_list.value[0], text("log_mel_dtype"), n_frames, n_mels)
    return FeatureRecord(
        track_id=text("track_id"),
        uri=text("uri"),
        content_sha256=text("content_sha256"),
        sample_rate=int(feature["sample_rate"].int64_list.value[0]),
        duration_s=float(feature["duration_s"].float_list.value[0]),
        log_mel=log_mel,
        feature_config=text("feature_config"),
        feature_version=text("feature_version"),
    )


def _decode_log_mel(payload: bytes, dtype: str, n_frames: int, n_mels: int) -> np.ndarray:
    if dtype not in LOG_MEL_DTYPES:
        raise ConfigError(f"unknown log_mel_dtype {dtype!r}")
    array = np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size != n_frames * n_mels:
        raise ConfigError(f"log_mel holds {array.size} values, expected {n_frames} x {n_mels}")
    return array.reshape(n_frames, n_mels).astype(np.float32)


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """tf.data parser: the stored fields plus `log_mel` as float32 [n_frames, n_mels]."""
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    shape = tf.stack([parsed["n_frames"], parsed["n_mels"]])
    values = tf.cond(
        tf.equal(parsed["log_mel_dtype"], b"float16"),
        lambda: tf.cast(tf.io.decode_raw(parsed["log_mel"], tf.float16, little_endian=True), tf.float32),
        lambda: tf.io.decode_raw(parsed["log_mel"], tf.float32, little_endian=True),
    )
    parsed["log_mel"] = tf.reshape(values, shape)
    return parsed


def read_shards(pattern: str, *, parallel_reads: int = 4) -> tf.data.Dataset:
    """Reads feature shards (a glob, local or gs://) as a dataset of parsed records.

    Each element is a dict with the keys of FEATURE_SPEC; `log_mel` is float32
    [n_frames, n_mels] and the byte fields are tf.string scalars.
    """
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise ConfigError(f"no feature shards match {pattern!r}")
    dataset = tf.data.TFRecordDataset(
        sorted(files), compression_type="GZIP", num_parallel_reads=min(parallel_reads, len(files))
    )
    return dataset.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
