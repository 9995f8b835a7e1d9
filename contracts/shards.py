"""The log-mel TFRecord schema, defined once for the writer (features job) and the readers.

One `tf.train.Example` per track segment. `log_mel` is raw little-endian bytes of a
row-major [n_frames, n_mels] array in `log_mel_dtype` (float16 by default: log-mel values
lie in [0, ~6], where float16 keeps ~3 significant digits and halves the storage).

Version 2 stores a track longer than SEGMENT_FRAMES (10.9 min) as several consecutive
records of one track id, each with its `frame_offset` in the track; `final` = 1 marks
the last (whose `duration_s` is the track's; earlier segments carry the seconds through
their own end). A track of one segment is one record with offset 0, as in version 1,
whose shards are still read (as offset 0, final). No record exceeds
SEGMENT_FRAMES × n_mels × 4 bytes (25 MB at float32).

Neither writing nor reading needs TensorFlow (~6 CPU-s to import in a worker):
`serialize_record` encodes the Example's protobuf wire format itself (the schema is four
message types), and `parse_record` parses it with the protobuf runtime, from the same
messages declared here (`_example_message`). The tf.data readers (`read_shards`, the parse
spec and version check as ops) are musicrep.contracts.shard_dataset.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import struct
import zlib
from typing import Any, BinaryIO, Iterator

import google_crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from isal import igzip, igzip_lib

from musicrep.errors import ConfigError, MusicrepError, RecordError

SCHEMA_VERSION = "musicrep-shard-2"
READABLE_VERSIONS = ("musicrep-shard-1", SCHEMA_VERSION)
SHARD_KIND = "features"  # the features job's file prefix and manifest kind
SHARD_SUFFIX = ".tfrecord.gz"
# gzip level the features job writes shards at (see gzip_writer). float16 log-mel barely
# compresses: ISA-L's level 1 makes shards 0.4 % larger than zlib's default 6 for a tenth
# of its CPU. Every level reads the same.
DEFAULT_GZIP_LEVEL = 1
# Levels compressed by ISA-L's igzip (its levels 1-3); 0 is stored, 4-9 are zlib's.
ISAL_GZIP_LEVELS = range(1, 4)
LOG_MEL_DTYPES = ("float16", "float32")

BYTES_FIELDS = (
    "schema_version", "track_id", "uri", "content_sha256", "log_mel", "log_mel_dtype", "feature_config",
    "feature_version",
)
INT_FIELDS = ("sample_rate", "n_mels", "n_frames", "frame_offset", "final")
FLOAT_FIELDS = ("duration_s",)


_OPTIONAL = {"frame_offset": 0, "final": 1}


@dataclasses.dataclass(frozen=True)
class FeatureRecord:
    """One track segment's features as stored in a shard; `log_mel` is [n_frames, n_mels]
    float32, frames from `frame_offset` of the track; `final`: the track's last segment."""

    track_id: str
    uri: str
    content_sha256: str
    sample_rate: int
    duration_s: float
    log_mel: np.ndarray
    feature_config: str
    feature_version: str
    frame_offset: int = 0
    final: bool = True

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
        "schema_version": SCHEMA_VERSION.encode(),
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
        "frame_offset": record.frame_offset,
        "final": int(record.final),
    }
    return _example_bytes(values)


# The protobuf wire format of tf.train.Example (tensorflow/core/example/{example,feature}.proto):
# Example.features = 1; Features.feature = 1 (map<string, Feature>: entry key = 1, value = 2);
# Feature.bytes_list = 1, float_list = 2, int64_list = 3; each list's `value` = 1, numbers
# packed. tests/features/test_shards.py checks the bytes parse with TensorFlow's own parser.
_LENGTH_DELIMITED = 2
_FLOAT = struct.Struct("<f")


def _example_bytes(values: dict[str, Any]) -> bytes:
    entries = []
    for key, value in values.items():
        if key in BYTES_FIELDS:
            feature = _message(1, _message(1, value))
        elif key in INT_FIELDS:
            feature = _message(3, _message(1, _varint(value & 0xFFFFFFFFFFFFFFFF)))
        else:
            feature = _message(2, _message(1, _FLOAT.pack(value)))
        entries.append(_message(1, _message(1, key.encode()) + _message(2, feature)))
    return _message(1, b"".join(entries))


def _message(field: int, payload: bytes) -> bytes:
    """One length-delimited field (bytes, a sub-message or a packed list)."""
    return _varint(field << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@functools.cache
def _example_message() -> type:
    """tf.train.Example's message class, declared from its .proto (field numbers and types
    as _example_bytes writes them) in a pool of its own, so it never clashes with
    TensorFlow's in one process. Its parser is the protobuf runtime's (upb), as TF's is."""
    proto = descriptor_pb2.FileDescriptorProto(name="musicrep/tf_example.proto", package="musicrep.tf_example", syntax="proto3")
    repeated, optional = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED, descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    kinds = descriptor_pb2.FieldDescriptorProto

    def message(name: str, *fields: tuple, map_entry: bool = False) -> descriptor_pb2.DescriptorProto:
        declared = descriptor_pb2.DescriptorProto(name=name)
        declared.options.map_entry = map_entry
        for field_name, number, kind, label, type_name in fields:
            declared.field.add(name=field_name, number=number, type=kind, label=label, type_name=type_name)
        return declared

    def of(name: str) -> str:
        return f".musicrep.tf_example.{name}"

    for name, kind in (("BytesList", kinds.TYPE_BYTES), ("FloatList", kinds.TYPE_FLOAT), ("Int64List", kinds.TYPE_INT64)):
        proto.message_type.append(message(name, ("value", 1, kind, repeated, None)))
    proto.message_type.append(message(
        "Feature",
        ("bytes_list", 1, kinds.TYPE_MESSAGE, optional, of("BytesList")),
        ("float_list", 2, kinds.TYPE_MESSAGE, optional, of("FloatList")),
        ("int64_list", 3, kinds.TYPE_MESSAGE, optional, of("Int64List")),
    ))
    features = message("Features", ("feature", 1, kinds.TYPE_MESSAGE, repeated, of("Features.FeatureEntry")))
    features.nested_type.append(message(
        "FeatureEntry",
        ("key", 1, kinds.TYPE_STRING, optional, None),
        ("value", 2, kinds.TYPE_MESSAGE, optional, of("Feature")),
        map_entry=True,
    ))
    proto.message_type.append(features)
    proto.message_type.append(message("Example", ("features", 1, kinds.TYPE_MESSAGE, optional, of("Features"))))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("musicrep.tf_example.Example"))


def parse_record(serialized: bytes) -> FeatureRecord:
    """Parses one serialized Example back into a FeatureRecord (no graph; for Beam DoFns).

    Raises:
        RecordError: not a musicrep feature record, another schema version, or a log-mel
            payload that does not match its shape.
    """
    try:
        feature = _example_message().FromString(serialized).features.feature
    except DecodeError as error:
        raise RecordError(f"not a protobuf Example: {error}") from None
    found = feature["schema_version"].bytes_list.value[0].decode() if "schema_version" in feature else None
    if found not in READABLE_VERSIONS:
        raise RecordError(_version_message(found))
    missing = [key for key in (*BYTES_FIELDS, *INT_FIELDS, *FLOAT_FIELDS) if key not in feature and key not in _OPTIONAL]
    if missing:
        raise RecordError(f"not a musicrep feature record: missing keys {missing}")

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
        frame_offset=int(feature["frame_offset"].int64_list.value[0]) if "frame_offset" in feature else 0,
        final=bool(feature["final"].int64_list.value[0]) if "final" in feature else True,
    )


def _version_message(found: str | None) -> str:
    shown = repr(found) if found else "none (a shard written before versions were recorded, or not ours)"
    return f"feature shard schema version {shown}; this musicrep reads {readable_versions()}: rerun the features job"


def readable_versions() -> str:
    return " or ".join(repr(version) for version in READABLE_VERSIONS)


def _decode_log_mel(payload: bytes, dtype: str, n_frames: int, n_mels: int) -> np.ndarray:
    if dtype not in LOG_MEL_DTYPES:
        raise RecordError(f"unknown log_mel_dtype {dtype!r}")
    array = np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<"))
    if array.size != n_frames * n_mels:
        raise RecordError(f"log_mel holds {array.size} values, expected {n_frames} x {n_mels}")
    return array.reshape(n_frames, n_mels).astype(np.float32)


class DamagedShardError(MusicrepError):
    """A shard that cannot be read to its end (truncated, corrupt)."""


_RECORD_HEADER = struct.Struct("<QI")


def iterate_shard_records(handle: BinaryIO) -> Iterator[bytes]:
    """The serialized records of one gzip TFRecord shard, read from a binary file handle.

    Framing and checksums are TFRecord's (length, masked CRC-32C of the length, data,
    masked CRC-32C of the data). Raises DamagedShardError, after yielding every record
    before the damage, with how far the shard was read and a short reason.
    """
    records = offset = 0

    def damaged(reason: str) -> DamagedShardError:
        return DamagedShardError(
            f"read {records} record(s), {offset} uncompressed bytes, then: {reason[:200]}"
        )

    # ISA-L's inflate: 0.32 s against zlib's 0.70 s for a 141 MB float32 shard (Intel Xeon,
    # AMX); it raises gzip's errors for truncated or damaged streams, and its own for bad
    # deflate data.
    stream = igzip.GzipFile(fileobj=handle, mode="rb")
    while True:
        try:
            header = stream.read(_RECORD_HEADER.size)
            if not header:
                return
            if len(header) < _RECORD_HEADER.size:
                raise damaged("truncated record header")
            length, length_crc = _RECORD_HEADER.unpack(header)
            if _masked_crc32c(header[:8]) != length_crc:
                raise damaged("record length checksum mismatch")
            data = stream.read(length)
            footer = stream.read(4)
        except (EOFError, OSError, zlib.error, igzip_lib.IsalError) as error:  # truncation/corruption
            raise damaged(f"{type(error).__name__}: {error}") from None
        if len(data) < length or len(footer) < 4:
            raise damaged(f"truncated record ({len(data)} of {length} bytes)")
        if _masked_crc32c(data) != struct.unpack("<I", footer)[0]:
            raise damaged("record data checksum mismatch")
        yield data
        records += 1
        offset += _RECORD_HEADER.size + length + 4


def gzip_writer(raw: BinaryIO, level: int = DEFAULT_GZIP_LEVEL) -> BinaryIO:
    """A gzip stream onto `raw` at `level`: 0 stores, 1-3 are ISA-L's igzip levels 1-3,
    4-9 zlib's. Closing the stream leaves `raw` open.

    ISA-L, not zlib, for the fast levels: on a 36-minute catalog's shards (41.5 MB of
    float16 log-mel) its level 1 took 0.14 CPU-s for 35.1 MB, zlib's level 1 0.90 CPU-s for
    34.9 MB (docs/front-end.md). Both write plain gzip (mtime 0), which every reader takes.
    """
    if level in ISAL_GZIP_LEVELS:
        return igzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0)
    return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0)


def write_shard_record(handle: BinaryIO, data: bytes) -> None:
    """Writes one serialized record with TFRecord's framing (what iterate_shard_records
    and tf.data read): length, masked CRC-32C of the length, data, masked CRC-32C of it."""
    length = struct.pack("<Q", len(data))
    handle.write(length + struct.pack("<I", _masked_crc32c(length)))
    handle.write(data)
    handle.write(struct.pack("<I", _masked_crc32c(data)))


def _masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

