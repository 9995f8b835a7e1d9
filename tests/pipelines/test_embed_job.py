"""The embed job end to end: shards or audio → Parquet, checked against bare model forwards."""
from __future__ import annotations

import glob
import gzip
import json
import os
import shutil

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import musicrep.model
from audio_files import tone, write_audio
from job_outputs import committed, read_dead_letters, read_embeddings
from musicrep.features import decode, log_mel
from musicrep.manifest import read_manifest
from musicrep.pipelines import embed as embed_job
from musicrep.pipelines import embed_transforms
from musicrep.pipelines import features as features_job
from musicrep.contracts import schema
from musicrep.pipelines.inference import EmbeddingModelHandler, TrackWindows, iterate_batches
from musicrep.pipelines.settings import InferenceSpec

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
TWO_PROCESSES = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
DURATIONS_S = {"a": 6.0, "b": 3.0, "sub/c": 9.5, "d": 1.2}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    (root / "sub").mkdir()
    for i, (track_id, duration_s) in enumerate(DURATIONS_S.items()):
        chord = sum(tone(220 * (1 + k / 4) * (1 + i / 8), duration_s, 44100, amplitude=0.2) for k in range(3))
        write_audio(str(root / f"{track_id}.flac"), chord, 44100)
    # 0.1 s: 11 frames, fewer than the network's minimum.
    write_audio(str(root / "blip.wav"), tone(880, 0.1, 44100), 44100)
    return root


@pytest.fixture(scope="module")
def shards(catalog, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("features"))
    features_job.run(["--input", f"{catalog}/**/*.*", "--output", out, "--dtype", "float32", *IN_MEMORY])
    return out


def read_errors(output_dir: str) -> list[dict]:
    errors = read_dead_letters(output_dir)
    assert read_manifest(output_dir)["counts"]["errors"] == len(errors)
    return errors


def bare_track_embedding(model, path: str, *, window: int = 300, hop: int = 200, max_windows=None) -> np.ndarray:
    """The test's own window cutting (SPEC §4 spelled out) and a plain model call."""
    with open(path, "rb") as handle:
        features = log_mel(decode(handle.read()))
    n_frames = features.shape[0]
    if n_frames <= window:
        slices = [features]
    else:
        centres = list(range(hop, n_frames, hop))[:max_windows]
        centres = [min(max(c, window // 2), n_frames - window // 2) for c in centres]
        slices = [features[c - window // 2 : c + window // 2] for c in centres]
    batch = np.stack([s.T for s in slices])
    return np.asarray(model(batch, training=False)).mean(axis=0)


@pytest.fixture(scope="module")
def embedded(shards, tiny_model_uri, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("embeddings"))
    embed_job.run(
        ["--features", f"{shards}/features-*", "--model", tiny_model_uri, "--output", out, "--batch-size", "4", *TWO_PROCESSES]
    )
    return out


def test_embeddings_equal_the_mean_of_bare_forwards(embedded, catalog, tiny_model_uri):
    model = musicrep.model.load(tiny_model_uri)
    metadata = musicrep.model.read_metadata(tiny_model_uri)
    table = read_embeddings(embedded)
    assert sorted(table.index) == sorted(DURATIONS_S)
    for track_id, duration_s in DURATIONS_S.items():
        row = table.loc[track_id]
        expected = bare_track_embedding(model, str(catalog / f"{track_id}.flac"))
        np.testing.assert_allclose(np.asarray(row["embedding"]), expected, atol=1e-5, rtol=1e-5)
        n_frames = 1 + int(round(duration_s * 16000)) // 160
        assert row["n_windows"] == max(1, len(range(200, n_frames, 200)))
        assert row["duration_s"] == pytest.approx(duration_s, abs=1e-3)
        assert row["model_id"] == metadata.model_id
        assert row["feature_config_sha256"] == metadata.feature_config_sha256
        # What the track got: a track shorter than one window is one window of its length.
        assert row["window_s"] == pytest.approx(min(300, n_frames) / 100) and row["hop_s"] == 2.0
        assert json.loads(row["window_spec"]) == {
            "window_frames": 300, "hop_frames": 200, "max_windows": None, "aggregate": "mean"
        }


def test_every_track_once_across_embeddings_and_errors(embedded, catalog):
    table = read_embeddings(embedded)
    errors = read_errors(embedded)
    assert [(e["track_id"], e["stage"], e["error_type"]) for e in errors] == [("blip", "too_short", "TooShortError")]
    inputs = {os.path.splitext(os.path.relpath(p, catalog))[0] for p in glob.glob(f"{catalog}/**/*.*", recursive=True)}
    assert set(table.index) | {e["track_id"] for e in errors} == inputs
    assert len(table) + len(errors) == len(inputs)


def test_parquet_schema_and_readers(embedded, tiny_model_uri):
    size = musicrep.model.read_metadata(tiny_model_uri).embedding_size
    # Rows are written after the per-track merge: the runner may write several files.
    paths = glob.glob(f"{embedded}/embeddings-*-of-*.parquet")
    assert paths
    for path in paths:
        assert pq.read_table(path).schema.equals(schema.embedding_schema(size), check_metadata=True)
    frame = pd.concat([pd.read_parquet(path) for path in paths])
    assert frame["embedding"].map(len).eq(size).all()
    rows = duckdb.sql(
        f"SELECT track_id, list_avg(embedding) AS m, len(embedding) AS d FROM '{embedded}/embeddings-*.parquet' ORDER BY track_id"
    ).fetchall()
    assert [r[0] for r in rows] == sorted(DURATIONS_S)
    for track_id, mean, d in rows:
        assert d == size
        assert mean == pytest.approx(float(np.mean(frame.set_index("track_id").loc[track_id, "embedding"])), rel=1e-5)


def test_fused_audio_path_equals_features_then_embed(embedded, catalog, tiny_model_uri, tmp_path):
    out = str(tmp_path / "fused")
    embed_job.run(["--audio", f"{catalog}/**/*.*", "--model", tiny_model_uri, "--output", out, *IN_MEMORY])
    fused, staged = read_embeddings(out), read_embeddings(embedded)
    assert list(fused.index) == list(staged.index)
    for track_id in fused.index:
        np.testing.assert_allclose(fused.loc[track_id, "embedding"], staged.loc[track_id, "embedding"], atol=1e-6)
        assert fused.loc[track_id, "content_sha256"] == staged.loc[track_id, "content_sha256"]
    assert [e["track_id"] for e in read_errors(out)] == ["blip"]


def test_rerun_gives_the_same_rows(shards, embedded, tiny_model_uri, tmp_path):
    out = str(tmp_path / "again")
    embed_job.run(["--features", f"{shards}/features-*", "--model", tiny_model_uri, "--output", out, *IN_MEMORY])
    first, second = read_embeddings(embedded), read_embeddings(out)
    columns = [c for c in first.columns if c not in ("created_at", "embedding")]
    pd.testing.assert_frame_equal(first[columns], second[columns])
    np.testing.assert_allclose(np.stack(first["embedding"]), np.stack(second["embedding"]), atol=1e-6)


def test_skip_existing_recomputes_only_new_or_changed_tracks(catalog, embedded, tiny_model_uri, tmp_path):
    changed = tmp_path / "catalog"
    shutil.copytree(catalog, changed)
    write_audio(str(changed / "b.flac"), tone(300, 3.0, 44100), 44100)  # changed content
    write_audio(str(changed / "e.flac"), tone(500, 4.0, 44100), 44100)  # new track
    os.remove(changed / "d.flac")  # gone from the catalog
    out = str(tmp_path / "next")
    result = embed_job.run(
        ["--audio", f"{changed}/**/*.*", "--model", tiny_model_uri, "--output", out,
         "--skip-existing", embedded, *IN_MEMORY]
    )
    # b and e are computed (2 + 1 windows); a and sub/c are copied; blip fails again.
    assert (result.tracks_in, result.tracks_out, result.tracks_failed) == (5, 4, 1)
    assert (result.counts["carried"], result.counts["windows_embedded"]) == (2, 3)
    assert "5 tracks read, 2 embedded, 2 unchanged (copied), 1 failed; 3 windows" in result.summary()
    before, after = read_embeddings(embedded), read_embeddings(out)
    assert sorted(after.index) == ["a", "b", "e", "sub/c"]
    for track_id in ("a", "sub/c"):
        assert after.loc[track_id, "created_at"] == before.loc[track_id, "created_at"]
        np.testing.assert_array_equal(after.loc[track_id, "embedding"], before.loc[track_id, "embedding"])
    assert after.loc["b", "content_sha256"] != before.loc["b", "content_sha256"]


@pytest.mark.parametrize(
    "flags, n_windows",
    [(["--window-s", "1", "--hop-s", "1", "--max-windows", "4"], 4), (["--window-s", "4", "--max-windows", "1"], 1)],
)
def test_nsynth_window_settings(shards, catalog, tiny_model_uri, tmp_path, flags, n_windows):
    out = str(tmp_path / "nsynth")
    embed_job.run(["--features", f"{shards}/features-*", "--model", tiny_model_uri, "--output", out, *flags, *IN_MEMORY])
    row = read_embeddings(out).loc["a"]
    assert row["n_windows"] == n_windows
    window, hop = (100, 100) if n_windows == 4 else (400, 200)
    model = musicrep.model.load(tiny_model_uri)
    expected = bare_track_embedding(model, str(catalog / "a.flac"), window=window, hop=hop, max_windows=n_windows)
    np.testing.assert_allclose(np.asarray(row["embedding"]), expected, atol=1e-5, rtol=1e-5)


def test_handler_batches_windows_across_tracks(tiny_model_uri, rng):
    def track(track_id: str, n_frames: int, starts: list[int], length: int) -> TrackWindows:
        return TrackWindows(track_id, track_id, "", n_frames / 100, "", rng.random((n_frames, 96), dtype=np.float32),
                            np.array(starts), length)

    tracks = [track("x", 700, [50, 250, 400], 300), track("short", 120, [0], 120), track("y", 400, [50, 100], 300)]
    batches = list(iterate_batches(tracks, batch_size=4))
    assert [(length, w.shape, pieces) for length, w, pieces in batches] == [
        (300, (4, 96, 300), [(0, slice(0, 3)), (2, slice(0, 1))]),
        (300, (1, 96, 300), [(2, slice(1, 2))]),
        (120, (1, 96, 120), [(1, slice(0, 1))]),
    ]
    handler = EmbeddingModelHandler(tiny_model_uri, InferenceSpec(batch_size=4))
    loaded = handler.load_model()
    results = list(handler.run_inference(tracks, loaded))
    for track_windows, result in zip(tracks, results):
        assert result.example is track_windows
        starts, length = track_windows.starts, track_windows.window_frames
        windows = np.stack([track_windows.log_mel[s : s + length].T for s in starts])
        np.testing.assert_allclose(result.inference, np.asarray(musicrep.model.load(tiny_model_uri)(windows, training=False)), atol=1e-5)


def test_per_window_rows_and_bad_records_are_dead_letters(shards, tiny_model_uri, tmp_path, rng):
    """--per-window writes one row per window; an unreadable record and a record of
    another mel size become dead letters next to the good tracks."""
    import tensorflow as tf

    from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
    from musicrep.contracts.shards import FeatureRecord, serialize_record

    extra = tmp_path / "extra"
    extra.mkdir()
    wrong_mels = FeatureRecord(
        track_id="wide", uri="mem://wide", content_sha256="0" * 64, sample_rate=16000, duration_s=4.0,
        log_mel=rng.random((401, 64), dtype=np.float32), feature_config=DEFAULT_FEATURE_CONFIG.to_json(),
        feature_version=DEFAULT_FEATURE_CONFIG.version,
    )
    for path in glob.glob(f"{shards}/features-*"):
        shutil.copy(path, extra)
    with tf.io.TFRecordWriter(str(extra / "extra-00000-of-00001.tfrecord.gz"), options="GZIP") as writer:
        writer.write(serialize_record(wrong_mels))
        writer.write(b"not an Example")
    out = str(tmp_path / "out")
    embed_job.run(
        ["--features", f"{extra}/*.tfrecord.gz", "--model", tiny_model_uri,
         "--output", out, "--per-window", *IN_MEMORY]
    )
    tracks = read_embeddings(out)
    assert sorted(tracks.index) == sorted(DURATIONS_S)
    failures = sorted((e["track_id"], e["stage"], e["error_type"]) for e in read_errors(out))
    assert failures == [("", "parse", "RecordError"), ("blip", "too_short", "TooShortError"), ("wide", "windows", "RecordError")]
    assert [e["message"] for e in read_errors(out) if e["stage"] == "parse"][0].startswith("not a protobuf Example")
    (path,) = glob.glob(f"{out}/windows-*-of-*.parquet")
    windows = pq.read_table(path)
    size = musicrep.model.read_metadata(tiny_model_uri).embedding_size
    assert windows.schema.equals(schema.window_schema(size), check_metadata=True)
    frame = windows.to_pandas()
    assert frame.groupby("track_id").size().to_dict() == tracks["n_windows"].to_dict()
    a = frame[frame.track_id == "a"].sort_values("start_s")
    assert a["start_s"].tolist() == pytest.approx([0.5, 2.5, 3.01])
    np.testing.assert_allclose(np.stack(a["embedding"]).mean(axis=0), tracks.loc["a", "embedding"], atol=1e-6)


@pytest.mark.slow
def test_runs_into_the_same_directory_give_the_last_runs_complete_set(shards, catalog, embedded, tiny_model_uri, tmp_path, runner_args):
    """Issue 10: re-runs into one directory (shards, then --audio) keep every track once,
    the dead letter, no stale file, and the same embeddings as the reference run."""
    reference = read_embeddings(embedded)
    for source, shard_count in ((["--features", shards], "2"), (["--features", shards], "1"), (["--audio", f"{catalog}/**/*.*"], "1")):
        out = str(tmp_path / ("audio" if source[0] == "--audio" else "shards"))
        embed_job.run([*source, "--model", tiny_model_uri, "--output", out, "--shards", shard_count, *runner_args])
        table = read_embeddings(out)
        assert list(table.index) == list(reference.index)
        np.testing.assert_allclose(np.stack(table["embedding"]), np.stack(reference["embedding"]), atol=1e-6)
        assert [(e["track_id"], e["stage"]) for e in read_errors(out)] == [("blip", "too_short")]
        assert len(committed(out, schema.EMBEDDINGS_PREFIX)) == int(shard_count)


def test_a_truncated_shard_gives_the_tracks_before_the_damage_and_one_dead_letter(shards, tiny_model_uri, tmp_path, capsys):
    """`head -c 30000` of a shard: the records before the cut are embedded, the shard
    is one short dead letter (stage, how far it was read), and the job exits 0."""
    import tensorflow as tf

    records = sorted(
        (item.numpy() for path in committed(shards, "features") for item in tf.data.TFRecordDataset(path, compression_type="GZIP")),
        key=len,
    )
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shard = damaged / "features-00000-of-00001.tfrecord.gz"
    with tf.io.TFRecordWriter(str(shard), options="GZIP") as writer:
        for record in records:
            writer.write(record)
    cut = min(30000, shard.stat().st_size // 2)
    shard.write_bytes(shard.read_bytes()[:cut])
    complete = _complete_records(shard.read_bytes())
    assert 0 < complete < len(records)

    out = str(tmp_path / "out")
    result = embed_job.run(["--features", str(shard), "--model", tiny_model_uri, "--output", out, *IN_MEMORY])
    from musicrep.contracts.shards import parse_record

    expected = {parse_record(r).track_id for r in records[:complete]}
    errors = read_errors(out)
    (letter,) = [e for e in errors if e["stage"] == "read_shard"]
    assert letter["uri"] == str(shard) and letter["error_type"] == "DamagedShardError"
    assert f"read {complete} record(s)" in letter["message"] and len(letter["message"]) < 400
    too_short = {e["track_id"] for e in errors if e["stage"] == "too_short"}
    assert set(read_embeddings(out).index) | too_short == expected
    # Every complete record is a row or a dead letter, and the damaged shard one more.
    assert result.tracks_in == complete + 1 and result.summary().startswith(f"embed: {complete + 1} tracks read")


def _complete_records(truncated_gzip: bytes) -> int:
    """Whole TFRecord frames in the part of a gzip stream that decompresses (zlib's
    streaming decoder, independent of the job's reader)."""
    import struct
    import zlib

    data = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(truncated_gzip)
    count = offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        if offset + 16 + length > len(data):
            break
        offset += 16 + length
        count += 1
    return count


def test_read_shard_file_called_directly_on_whole_corrupt_and_missing_shards(shards, tmp_path):
    import tensorflow as tf

    (path,) = committed(shards, "features")
    expected = [item.numpy() for item in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    assert list(embed_transforms.ReadShardFile().process(path)) == expected
    # A record whose stored checksum no longer matches its bytes (uncompressed stream).
    flipped = bytearray(b"".join(_frame(r, tmp_path / "frame.tfrecord") for r in expected))
    flipped[16 + len(expected[0]) + 12 + 5] ^= 0xFF  # inside the second record's data
    corrupt = tmp_path / "corrupt.tfrecord.gz"
    corrupt.write_bytes(gzip.compress(bytes(flipped)))
    *records, letter = embed_transforms.ReadShardFile().process(str(corrupt))
    assert records == expected[:1]
    assert letter.tag == "errors" and letter.value["stage"] == "read_shard"
    assert "read 1 record(s)" in letter.value["message"] and "checksum" in letter.value["message"]
    (missing,) = embed_transforms.ReadShardFile().process(str(tmp_path / "gone.tfrecord.gz"))
    assert missing.value["error_type"] == "FileNotFoundError"


def _frame(record: bytes, path) -> bytes:
    """One TFRecord frame, with TensorFlow's own writer as the reference."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(record)
    return path.read_bytes()


@pytest.mark.parametrize("flags", [["--hop-s", "0.004"], ["--window-s", "0.001"], ["--max-windows", "0"], ["--batch-size", "0"]])
def test_window_and_batch_settings_that_give_no_work_are_usage_errors_before_any_work(
    shards, tiny_model_uri, tmp_path, capsys, flags
):
    from musicrep import cli

    out = tmp_path / "out"
    assert cli.main(["embed", "--features", str(shards), "--model", tiny_model_uri, "--output", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("musicrep embed: ") and error.count("\n") == 1
    assert not out.exists()
