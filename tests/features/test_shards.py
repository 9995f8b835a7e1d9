"""The shard schema: the version is written into every record and checked on read."""
import numpy as np
import pytest
import tensorflow as tf

import dataclasses

from musicrep.contracts.shard_dataset import parse_example
from musicrep.contracts.shards import SCHEMA_VERSION, FeatureRecord, parse_record, serialize_record
from musicrep.errors import RecordError


def _record(rng) -> FeatureRecord:
    return FeatureRecord(
        track_id="t1", uri="file:///t1.wav", content_sha256="0" * 64, sample_rate=16000, duration_s=1.0,
        log_mel=rng.random((101, 96), dtype=np.float32), feature_config="{}", feature_version="musicrep-logmel-1",
    )


def _with_version(serialized: bytes, version: str | None) -> bytes:
    example = tf.train.Example.FromString(serialized)
    if version is None:
        del example.features.feature["schema_version"]
    else:
        example.features.feature["schema_version"].bytes_list.value[:] = [version.encode()]
    return example.SerializeToString()


def test_the_version_is_written_and_the_record_round_trips(rng):
    record = _record(rng)
    serialized = serialize_record(record, dtype="float32")
    stored = tf.train.Example.FromString(serialized).features.feature["schema_version"].bytes_list.value
    assert list(stored) == [SCHEMA_VERSION.encode()]
    again = parse_record(serialized)
    np.testing.assert_array_equal(again.log_mel, record.log_mel)
    parsed = parse_example(tf.constant(serialized))
    np.testing.assert_array_equal(parsed["log_mel"].numpy(), record.log_mel)


@pytest.mark.parametrize("found, shown", [("musicrep-shard-0", "'musicrep-shard-0'"), (None, "none")])
def test_another_or_no_version_is_a_record_error_naming_both(rng, found, shown):
    serialized = _with_version(serialize_record(_record(rng)), found)
    with pytest.raises(RecordError, match=f"schema version {shown}.*this musicrep reads .*'{SCHEMA_VERSION}'"):
        parse_record(serialized)
    with pytest.raises(tf.errors.InvalidArgumentError, match=SCHEMA_VERSION):
        parse_example(tf.constant(serialized))


def _as_version_1(serialized: bytes) -> bytes:
    """A record as musicrep-shard-1 wrote it: no segment fields."""
    example = tf.train.Example.FromString(_with_version(serialized, "musicrep-shard-1"))
    for key in ("frame_offset", "final"):
        del example.features.feature[key]
    return example.SerializeToString()


def test_version_1_shards_are_still_read_as_whole_tracks(rng):
    record = _record(rng)
    old = _as_version_1(serialize_record(record, dtype="float32"))
    again = parse_record(old)
    assert (again.frame_offset, again.final) == (0, True)
    np.testing.assert_array_equal(again.log_mel, record.log_mel)
    parsed = parse_example(tf.constant(old))
    assert (int(parsed["frame_offset"]), int(parsed["final"])) == (0, 1)
    np.testing.assert_array_equal(parsed["log_mel"].numpy(), record.log_mel)


def test_segments_round_trip_with_their_offsets(rng):
    whole = _record(rng)
    segments = [
        dataclasses.replace(whole, log_mel=whole.log_mel[a:b], frame_offset=a, final=b == 101)
        for a, b in ((0, 40), (40, 80), (80, 101))
    ]
    parsed = [parse_record(serialize_record(r, dtype="float32")) for r in segments]
    assert [(r.frame_offset, r.final, r.n_frames) for r in parsed] == [(0, False, 40), (40, False, 40), (80, True, 21)]
    np.testing.assert_array_equal(np.concatenate([r.log_mel for r in parsed]), whole.log_mel)


def test_the_hand_encoded_example_is_the_one_tensorflow_builds(rng):
    # serialize_record writes the protobuf wire format itself (no TensorFlow in the
    # features job): TensorFlow's own Example, built field by field, must be equal.
    record = dataclasses.replace(_record(rng), track_id="naïve/ü", duration_s=1234.5678, frame_offset=3 << 40, final=False)
    serialized = serialize_record(record, dtype="float16")
    values = {
        "schema_version": [SCHEMA_VERSION.encode()], "track_id": [record.track_id.encode()],
        "uri": [record.uri.encode()], "content_sha256": [record.content_sha256.encode()],
        "log_mel": [record.log_mel.astype("<f2").tobytes()], "log_mel_dtype": [b"float16"],
        "feature_config": [b"{}"], "feature_version": [record.feature_version.encode()],
        "sample_rate": [16000], "n_mels": [96], "n_frames": [101], "frame_offset": [3 << 40], "final": [0],
        "duration_s": [1234.5678],
    }
    feature = {}
    for key, value in values.items():
        if isinstance(value[0], bytes):
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=value))
        elif isinstance(value[0], int):
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        else:
            feature[key] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
    expected = tf.train.Example(features=tf.train.Features(feature=feature))
    assert tf.train.Example.FromString(serialized) == expected
    assert len(serialized) == len(expected.SerializeToString())


def test_writing_and_reading_shards_do_not_import_tensorflow():
    # The features job's workers, and the embed job's with OpenVINO, never load TensorFlow.
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, musicrep.pipelines.features, musicrep.pipelines.embed\n"
        "from musicrep.contracts.shards import FeatureRecord, parse_record, serialize_record\n"
        "record = FeatureRecord(track_id='t', uri='u', content_sha256='0' * 64, sample_rate=16000, duration_s=2.5,\n"
        "    log_mel=np.ones((7, 96), np.float32), feature_config='{}', feature_version='v', frame_offset=5, final=False)\n"
        "again = parse_record(serialize_record(record))\n"
        "print(again.track_id, again.n_frames, again.frame_offset, again.final, again.duration_s)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'librosa')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["t 7 5 False 2.5", "[]"]


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"\x0a\x05abc"])
def test_bytes_that_are_no_protobuf_are_a_record_error(garbage):
    with pytest.raises(RecordError, match="not a protobuf Example"):
        parse_record(garbage)


def test_the_reader_parses_what_tensorflow_serializes(rng):
    # parse_record declares the Example messages itself: a record TensorFlow encoded,
    # with the fields in another order, reads back field for field.
    record = dataclasses.replace(_record(rng), track_id="naïve/ü", frame_offset=3 << 40, final=False)
    example = tf.train.Example.FromString(serialize_record(record, dtype="float32"))
    reordered = tf.train.Example()
    for key in sorted(example.features.feature, reverse=True):
        reordered.features.feature[key].CopyFrom(example.features.feature[key])
    again = parse_record(reordered.SerializeToString())
    assert again == dataclasses.replace(record, log_mel=again.log_mel)
    np.testing.assert_array_equal(again.log_mel, record.log_mel)
