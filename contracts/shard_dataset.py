"""The tf.data side of the shard schema (musicrep.contracts.shards): the parse spec, the
version check and the log-mel decoding as TensorFlow ops, and `read_shards`, a dataset of
parsed records. Its own module so that the features job's writer never loads TensorFlow.
"""
from __future__ import annotations

import tensorflow as tf

from musicrep.contracts.shards import BYTES_FIELDS, FLOAT_FIELDS, INT_FIELDS, READABLE_VERSIONS, SHARD_KIND, readable_versions
from musicrep.manifest import resolve_files

FEATURE_SPEC = {
    **{key: tf.io.FixedLenFeature([], tf.string) for key in BYTES_FIELDS},
    # Read with a default so that a shard from before versions were written fails the
    # version check (naming what it found), not the parser.
    "schema_version": tf.io.FixedLenFeature([], tf.string, default_value=""),
    **{key: tf.io.FixedLenFeature([], tf.int64) for key in INT_FIELDS},
    **{key: tf.io.FixedLenFeature([], tf.float32) for key in FLOAT_FIELDS},
    # Version 1 had no segments: every record was a whole track.
    "frame_offset": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "final": tf.io.FixedLenFeature([], tf.int64, default_value=1),
}


def check_schema_version(version: tf.Tensor) -> tf.Operation | None:
    """The tf.data readers' version check: InvalidArgumentError with the found and expected versions."""
    readable = tf.reduce_any(tf.equal(version, tf.constant(READABLE_VERSIONS)))
    return tf.debugging.Assert(
        readable,
        ["feature shard schema version", version, f"; this musicrep reads {readable_versions()}: rerun the features job"],
    )


def decode_log_mel_values(raw: tf.Tensor, dtype: tf.Tensor) -> tf.Tensor:
    """float32 values of raw little-endian log-mel bytes (any shape of `raw`; scalar `dtype`,
    "float16" or "float32"): one more axis, the values."""
    return tf.cond(
        tf.equal(dtype, "float16"),
        lambda: tf.cast(tf.io.decode_raw(raw, tf.float16, little_endian=True), tf.float32),
        lambda: tf.io.decode_raw(raw, tf.float32, little_endian=True),
    )


def log_mel_itemsize(dtype: tf.Tensor) -> tf.Tensor:
    """Bytes per stored value (int64) for the scalar `dtype` tensor."""
    return tf.where(tf.equal(dtype, "float16"), tf.constant(2, tf.int64), tf.constant(4, tf.int64))


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """tf.data parser: the stored fields plus `log_mel` as float32 [n_frames, n_mels]."""
    parsed = tf.io.parse_single_example(serialized, FEATURE_SPEC)
    shape = tf.stack([parsed["n_frames"], parsed["n_mels"]])
    with tf.control_dependencies([check_schema_version(parsed["schema_version"])]):
        parsed["log_mel"] = tf.reshape(decode_log_mel_values(parsed["log_mel"], parsed["log_mel_dtype"]), shape)
    return parsed


def read_shards(pattern: str, *, parallel_reads: int = 4) -> tf.data.Dataset:
    """Reads feature shards as a dataset of parsed records: `pattern` is the features
    job's output directory (the files its manifest lists) or a glob, local or gs://.

    Each element is a dict with the keys of FEATURE_SPEC; `log_mel` is float32
    [n_frames, n_mels] and the byte fields are tf.string scalars. A long track is several
    consecutive elements (segments: `frame_offset`, `final`).
    """
    files = resolve_files(pattern, kind=SHARD_KIND)
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=min(parallel_reads, len(files)))
    return dataset.map(parse_example, num_parallel_calls=tf.data.AUTOTUNE)
