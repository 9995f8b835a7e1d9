"""The features job end to end on the embedded runner, and its transforms on their own."""
from __future__ import annotations

import collections
import glob
import io
import hashlib
import json
import os

import dataclasses

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import threadpoolctl
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from audio_files import tone, write_audio
from job_outputs import assert_only_committed, committed, read_dead_letters
from musicrep.errors import ConfigError
from musicrep.contracts.shard_dataset import read_shards
from musicrep.contracts.shards import parse_record
from musicrep.features import decode, log_mel
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
from musicrep.features.segments import SEGMENT_FRAMES
from musicrep.features.stream import TrackLogMel
from musicrep.contracts import tracks
from musicrep.pipelines import features as job

# Two workers in the job's own running mode (threads); the catalog test runs in processes too.
RUNNER_ARGS = ["--direct_num_workers", "2"]
IN_PROCESSES = [*RUNNER_ARGS, "--direct_running_mode", "multi_processing"]


def worker_log_mel(content: bytes) -> np.ndarray:
    """The bare functions with one BLAS thread, as the job's workers run them: the mel
    product's sums differ in their last bits with the thread count (~2e-5 after the log)."""
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return log_mel(decode(content))


SEGMENTS: dict[str, int] = {}  # records per track of the last read_outputs


def read_outputs(output_dir: str) -> tuple[dict, list[dict]]:
    """The committed records by track id (a long track's segments joined) and the dead
    letters; the directory holds nothing else and the manifest's counts are the files'
    contents."""
    manifest = assert_only_committed(output_dir)
    records = {}
    for path in committed(output_dir, "features"):
        segments = []  # of the track being read: consecutive in its shard, in order
        for serialized in _tfrecords(path):
            record = parse_record(serialized)
            assert record.track_id not in records, f"{record.track_id} written twice"
            if segments:
                assert record.track_id == segments[0].track_id, f"{segments[0].track_id} has no final segment"
            assert record.frame_offset == sum(s.n_frames for s in segments)
            assert record.n_frames <= SEGMENT_FRAMES
            segments.append(record)
            if record.final:
                whole = np.concatenate([s.log_mel for s in segments])
                records[record.track_id] = dataclasses.replace(record, log_mel=whole, frame_offset=0)
                SEGMENTS[record.track_id] = len(segments)
                segments = []
        assert not segments
    errors = read_dead_letters(output_dir)
    assert manifest["counts"] == {"features": len(records), "errors": len(errors)}
    return records, errors


def _tfrecords(path: str):
    import tensorflow as tf

    for item in tf.data.TFRecordDataset(path, compression_type="GZIP"):
        yield item.numpy()


@pytest.fixture(scope="module")
def good_catalog(tmp_path_factory):
    """Four playable tracks in four codecs, one in a subfolder, one with a spaced,
    non-ASCII name."""
    root = tmp_path_factory.mktemp("catalog")
    (root / "sub").mkdir()
    stereo = np.stack([tone(220, 3.0, 44100), tone(330, 3.0, 44100)], axis=1)
    write_audio(str(root / "a.wav"), stereo, 44100)
    write_audio(str(root / "sub" / "b.flac"), tone(440, 2.5, 22050), 22050)
    write_audio(str(root / "Café del mar.mp3"), tone(523.25, 4.0, 44100), 44100)
    write_audio(str(root / "d.opus"), tone(660, 1.5, 48000, amplitude=0.2), 48000)
    return root


@pytest.fixture(scope="module")
def bad_catalog(tmp_path_factory):
    """The issue's bad inputs: each must be written correctly or dead-lettered."""
    root = tmp_path_factory.mktemp("bad")
    (root / "zero.mp3").write_bytes(b"")
    (root / "text.mp3").write_text("this is not audio\n")
    full = write_audio(str(root / "full.mp3"), tone(440, 5.0, 44100), 44100)
    with open(full, "rb") as handle:
        (root / "truncated.mp3").write_bytes(handle.read()[:3000])
    write_audio(str(root / "clip.wav"), tone(440, 0.2, 44100), 44100)
    write_audio(str(root / "silence.flac"), np.zeros(44100 * 2, np.float32), 44100)
    # 8 channels at 96 kHz, each channel its own tone.
    eight = np.stack([tone(200 + 100 * c, 1.0, 96000, amplitude=0.1) for c in range(8)], axis=1)
    write_audio(str(root / "eight channels 96k.wav"), eight, 96000)
    _write_float_wav(str(root / "nan.wav"), np.array([0.1, np.nan, np.inf, -0.1] * 4000, np.float32), 16000)
    (root / "folder.wav").mkdir()
    os.symlink(str(root / "missing-target.wav"), str(root / "dangling.wav"))
    # 20 minutes at a low rate keeps the file small; the job still decodes all of it.
    write_audio(str(root / "long.flac"), tone(110, 20 * 60.0, 8000, amplitude=0.3), 8000)
    return root


def _write_float_wav(path: str, samples: np.ndarray, rate_hz: int) -> None:
    import soundfile

    soundfile.write(path, samples, rate_hz, subtype="FLOAT")


@pytest.mark.parametrize("runner", [RUNNER_ARGS, IN_PROCESSES], ids=["threads", "processes"])
def test_job_writes_features_equal_to_the_bare_functions(runner, good_catalog, tmp_path):
    out = str(tmp_path / "out")
    result = job.run(["--input", f"{good_catalog}/**", "--output", out, "--shards", "2", "--dtype", "float32", *runner])
    records, errors = read_outputs(out)
    assert errors == []
    assert sorted(records) == ["Café del mar", "a", "d", "sub/b"]
    assert len(committed(out, "features")) == 2
    assert (result.job, result.tracks_in, result.tracks_out, result.tracks_failed) == ("features", 4, 4, 0)
    files = committed(out, "features") + committed(out, "errors")
    assert sorted(result.committed) == sorted(os.path.basename(p) for p in files) and len(files) == 3
    assert result.run_id in result.committed[0] and result.seconds > 0
    assert result.summary().startswith("features: 4 tracks read, 4 written, 0 failed")
    for path in glob.glob(f"{good_catalog}/**/*.*", recursive=True):
        track_id = os.path.splitext(os.path.relpath(path, good_catalog))[0]
        record = records[track_id]
        with open(path, "rb") as handle:
            content = handle.read()
        expected = worker_log_mel(content)
        assert record.uri == path
        assert record.content_sha256 == hashlib.sha256(content).hexdigest()
        assert record.log_mel.shape == expected.shape
        np.testing.assert_array_equal(record.log_mel, expected)
        assert record.duration_s == pytest.approx((expected.shape[0] - 1) * 0.01, abs=0.011)
        assert record.sample_rate == 16000 and record.n_mels == 96
        assert json.loads(record.feature_config) == json.loads(DEFAULT_FEATURE_CONFIG.to_json())


def test_bad_inputs_are_written_or_dead_lettered_and_counts_add_up(bad_catalog, tmp_path):
    out = str(tmp_path / "out")
    result = job.run(["--input", f"{bad_catalog}/*", "--output", out, *RUNNER_ARGS])
    records, errors = read_outputs(out)
    inputs = {os.path.splitext(name)[0] for name in os.listdir(bad_catalog)}
    failed = {error["track_id"]: error for error in errors}
    assert set(records) | set(failed) == inputs
    assert not set(records) & set(failed)
    assert {"zero", "text", "nan", "folder", "dangling"} <= set(failed)
    assert failed["zero"]["error_type"] == "AudioDecodeError" and failed["zero"]["stage"] == "decode"
    assert "non-finite" in failed["nan"]["message"]
    assert failed["folder"]["error_type"] == "IsADirectoryError" and failed["folder"]["stage"] == "read"
    assert failed["dangling"]["error_type"] == "FileNotFoundError"
    assert {"clip", "silence", "eight channels 96k", "long", "full"} <= set(records)
    assert records["clip"].n_frames == 1 + int(0.2 * 16000) // 160
    assert np.all(records["silence"].log_mel == 0.0)
    assert records["long"].duration_s == pytest.approx(1200.0, abs=0.01)
    # 20 minutes are two segments, cut exactly where one array would be.
    assert SEGMENTS["long"] == 2 and records["long"].n_frames == 1 + 1200 * 100
    long_log_mel = worker_log_mel((bad_catalog / "long.flac").read_bytes())
    np.testing.assert_array_equal(records["long"].log_mel, long_log_mel.astype(np.float16).astype(np.float32))
    # Eight tones summed: louder than one channel could be (SPEC §1's channel sum).
    assert records["eight channels 96k"].log_mel.max() > 0
    assert (result.tracks_in, result.tracks_out, result.tracks_failed) == (len(inputs), len(records), len(failed))
    assert f"{len(inputs)} tracks read, {len(records)} written, {len(failed)} failed" in result.summary()


def test_a_read_that_stalls_is_a_timeout_dead_letter_and_the_job_goes_on(good_catalog, tmp_path):
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "a.wav").write_bytes((good_catalog / "a.wav").read_bytes())
    os.mkfifo(catalog / "stalled.mp3")  # a read that never returns, as on a dead mount
    out = str(tmp_path / "out")
    result = job.run(["--input", f"{catalog}/*", "--output", out, "--time-budget-s", "2", *RUNNER_ARGS])
    records, errors = read_outputs(out)
    assert set(records) == {"a"} and records["a"].n_frames == 301
    (error,) = errors
    assert (error["track_id"], error["stage"], error["error_type"]) == ("stalled", "timeout", "TrackTimeoutError")
    assert error["message"].startswith("gave up after 2.")
    assert (result.tracks_in, result.tracks_out, result.tracks_failed) == (2, 1, 1)


def test_a_long_track_that_fails_part_way_is_one_dead_letter_and_no_segment(tmp_path):
    """Segments of an unfinished track wait in the spill: a failure hours in (a timeout,
    a decode error) leaves no part of the track in the shards."""
    path = write_audio(str(tmp_path / "t.flac"), tone(110, 30.0, 8000), 8000)
    blocks = list(TrackLogMel(open(path, "rb")))
    dofn = job.ComputeLogMel(DEFAULT_FEATURE_CONFIG, segment_frames=700)
    failing = job.TrackInProgress(track_id="t", uri="u")
    assert [output for block in blocks for output in dofn.on_block(failing, block)] == []
    letter = {"track_id": "t", "stage": "timeout"}
    assert not failing.state[1].closed  # four segments wait in the spill
    (output,) = dofn.on_failure(failing, letter)
    assert (output.tag, output.value) == ("errors", letter)
    assert failing.state[1].closed
    done = job.TrackInProgress(track_id="t", uri="u", duration_s=30.0)
    assert [output for block in blocks for output in dofn.on_block(done, block)] == []
    records = list(dofn.on_end(done))
    assert [(r.frame_offset, r.n_frames, r.final) for r in records] == [
        (0, 700, False), (700, 700, False), (1400, 700, False), (2100, 700, False), (2800, 201, True)
    ]
    np.testing.assert_array_equal(np.concatenate([r.log_mel for r in records]), np.concatenate(blocks))


def test_manifest_with_duplicate_ids_dead_letters_the_extra_uri(good_catalog, tmp_path):
    wav, flac = str(good_catalog / "a.wav"), str(good_catalog / "sub" / "b.flac")
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"track_id": ["x", "x", "y"], "uri": [flac, wav, flac]}), manifest)
    out = str(tmp_path / "out")
    job.run(["--input", str(manifest), "--output", out, *RUNNER_ARGS])
    records, errors = read_outputs(out)
    assert sorted(records) == ["x", "y"]
    assert records["x"].uri == wav  # the first in sorted order is kept
    assert [(e["track_id"], e["uri"], e["error_type"]) for e in errors] == [("x", flac, "DuplicateTrackId")]


def test_csv_manifest_and_rerun_replaces_previous_shards(good_catalog, tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"track_id,uri\n001,{good_catalog / 'a.wav'}\n", encoding="utf-8")
    out = str(tmp_path / "out")
    job.run(["--input", f"{good_catalog}/**", "--output", out, "--shards", "3", *RUNNER_ARGS])
    assert len(glob.glob(f"{out}/features-*")) == 3
    job.run(["--input", str(manifest), "--output", out, "--shards", "1", *RUNNER_ARGS])
    (shard,) = glob.glob(f"{out}/features-*")
    assert shard.endswith("-00000-of-00001.tfrecord.gz")
    records, errors = read_outputs(out)
    assert list(records) == ["001"] and errors == []


@pytest.mark.slow
def test_runs_into_the_same_directory_give_the_last_runs_complete_set(mixed_catalog, tmp_path, runner_args):
    """Issue 10: a second run with the same sizes of files used to keep the old files
    (Beam skips equal-size destinations) and the clean-up then deleted them; on Prism the
    clean-up deleted everything. Every run now commits fresh names."""
    out = str(tmp_path / "out")
    runs = []
    for shards in ("2", "2", "1"):
        job.run(["--input", f"{mixed_catalog}/*", "--output", out, "--shards", shards, *runner_args])
        records, errors = read_outputs(out)
        assert sorted(records) == ["a", "b"]
        assert [(e["track_id"], e["stage"]) for e in errors] == [("bad", "decode")]
        assert len(committed(out, "features")) == int(shards)
        runs.append(records)
    for records in runs[1:]:
        for track_id, record in records.items():
            assert record.log_mel.tobytes() == runs[0][track_id].log_mel.tobytes()
            assert record.content_sha256 == runs[0][track_id].content_sha256


def test_read_shards_follows_the_manifest(good_catalog, tmp_path):
    out = str(tmp_path / "out")
    job.run(["--input", f"{good_catalog}/*.wav", "--output", out, "--dtype", "float32", *RUNNER_ARGS])
    # A killed later run left a shard with a committed-looking name: readers skip it.
    (tmp_path / "out" / "features-19990101T000000Z-dead00-00000-of-00001.tfrecord.gz").write_bytes(b"partial")
    for pattern in (out, f"{out}/features-*.tfrecord.gz"):
        assert [e["track_id"].numpy() for e in read_shards(pattern)] == [b"a"]


def test_read_shards_parses_float16_shards(good_catalog, tmp_path):
    out = str(tmp_path / "out")
    job.run(["--input", f"{good_catalog}/*.wav", "--output", out, *RUNNER_ARGS])
    (element,) = list(read_shards(out))
    expected = worker_log_mel((good_catalog / "a.wav").read_bytes())
    assert element["track_id"].numpy() == b"a"
    assert element["log_mel_dtype"].numpy() == b"float16"
    # float16 keeps 11 significant bits: relative error ≤ 2^-11 of values below ~8.
    np.testing.assert_allclose(element["log_mel"].numpy(), expected, rtol=2**-11, atol=1e-6)


def test_extract_log_mel_transform_in_a_test_pipeline(good_catalog):
    wav = str(good_catalog / "a.wav")
    missing = str(good_catalog / "nope.wav")
    with BeamTestPipeline() as pipeline:
        results = (
            pipeline
            | beam.Create([("a", wav), ("gone", missing)])
            | job.ExtractLogMel()
        )
        ids = results["features"] | "Ids" >> beam.Map(lambda record: record.track_id)
        failures = results["errors"] | "Stages" >> beam.Map(lambda e: (e["track_id"], e["stage"], e["error_type"]))
        assert_that(ids, equal_to(["a"]), label="features")
        assert_that(failures, equal_to([("gone", "read", "FileNotFoundError")]), label="errors")


def test_keep_one_uri_per_track_called_directly():
    outputs = list(job.KeepOneUriPerTrack().process(("t", ["b.mp3", "a.mp3", "c.mp3"])))
    assert outputs[0] == ("t", "a.mp3")
    assert [o.value["uri"] for o in outputs[1:]] == ["b.mp3", "c.mp3"]
    assert all(o.tag == "errors" for o in outputs[1:])


@pytest.mark.parametrize(
    "pattern, path, expected",
    [
        ("/data/cat/**/*.mp3", "/data/cat/a/b.mp3", "a/b"),
        ("gs://bucket/x/*.wav", "gs://bucket/x/song.v2.wav", "song.v2"),
        ("/data/cat/*", "/data/cat/README", "README"),
        ("/data/c?t/*.mp3", "/data/cat/a.mp3", "cat/a"),
    ],
)
def test_track_id_is_the_path_below_the_glob_prefix_without_extension(pattern, path, expected):
    assert tracks.track_id_for(path, tracks.glob_prefix(pattern)) == expected


def test_launcher_refuses_an_input_that_names_nothing(tmp_path):
    with pytest.raises(ConfigError, match="no files match"):
        job.run(["--input", f"{tmp_path}/*.mp3", "--output", str(tmp_path / "out")])
    with pytest.raises(ConfigError, match="does not exist"):
        job.run(["--input", f"{tmp_path}/nothing.csv", "--output", str(tmp_path / "out")])
    pq.write_table(pa.table({"id": ["a"], "path": ["a.wav"]}), tmp_path / "m.parquet")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['track_id', 'uri'\]"):
        job.run(["--input", str(tmp_path / "m.parquet"), "--output", str(tmp_path / "out")])
    (tmp_path / "m.csv").write_text("id,uri\na,a.wav\n")
    with pytest.raises(ConfigError, match=r"lacks column\(s\) \['track_id'\]"):
        job.run(["--input", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out")])


@pytest.mark.parametrize("level", [0, 1, 3, 4, 9])
def test_shards_at_any_gzip_level_read_back_the_same_records(level, tmp_path):
    import tensorflow as tf
    from isal import igzip

    from musicrep.contracts.shards import iterate_shard_records

    records = [b"first", bytes(range(256)) * 400, b""]
    sink = job.GzipTFRecordSink(str(tmp_path / "features"), gzip_level=level)
    path = str(tmp_path / "shard.tfrecord.gz")
    handle = sink.open(path)
    for record in records:
        sink.write_encoded_record(handle, record)
    # The fast levels are ISA-L's (a tenth of zlib's CPU, docs/front-end.md), the others zlib's.
    assert isinstance(handle._gzip, igzip.GzipFile) == (level in (1, 3))  # noqa: SLF001
    sink.close(handle)
    with open(path, "rb") as f:
        assert list(iterate_shard_records(f)) == records
    assert [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")] == records
    stored = sum(len(r) + 16 for r in records)
    size = os.path.getsize(path)
    assert size > stored if level == 0 else size < stored / 10  # 0 stores; others squeeze the repeats


def test_launcher_refuses_a_gzip_level_outside_0_to_9(good_catalog, tmp_path):
    with pytest.raises(ConfigError, match="--gzip-level must be 0 .* to 9, got 10"):
        job.run(["--input", f"{good_catalog}/*", "--output", str(tmp_path / "out"), "--gzip-level", "10"])


def test_a_flipped_byte_anywhere_in_a_shard_is_a_damaged_shard_error(tmp_path):
    """ISA-L's inflate raises its own error for bad deflate data (a distance too far back,
    an invalid symbol), gzip's for a bad CRC or length: each is a DamagedShardError after
    the records before the damage, never an unhandled exception."""
    from musicrep.contracts.shards import DamagedShardError, iterate_shard_records

    rng = np.random.default_rng(0)
    records = [rng.bytes(1000) + b"z" * 5000 for _ in range(50)]
    sink = job.GzipTFRecordSink(str(tmp_path / "features"), gzip_level=6)
    path = tmp_path / "shard.tfrecord.gz"
    handle = sink.open(str(path))
    for record in records:
        sink.write_encoded_record(handle, record)
    sink.close(handle)
    data = path.read_bytes()
    reasons = collections.Counter()
    for position in range(10, len(data) - 8, 97):
        damaged = bytearray(data)
        damaged[position] ^= 0x55
        read = []
        try:
            read.extend(iterate_shard_records(io.BytesIO(bytes(damaged))))
            # Some flips change nothing inflated (header fields, a block's unused bits).
            assert read == records
            reasons["unchanged"] += 1
        except DamagedShardError as error:
            assert read == records[: len(read)]
            reasons[str(error).split("then: ")[1].split(":")[0]] += 1
    assert {"record data checksum mismatch", "IsalError", "BadGzipFile"} <= set(reasons), reasons
    assert reasons["unchanged"] < sum(reasons.values()) / 20, reasons
