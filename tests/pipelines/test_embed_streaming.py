"""The embed job on long tracks as streams: segmented shards (windows across segment
boundaries), --max-duration-s and --time-budget-s, against the whole-array path (the
track's whole log-mel, every window cut at once, one mean) and against each other."""
from __future__ import annotations

import dataclasses
import glob
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import threadpoolctl

import musicrep.model
from audio_files import tone, write_audio
from job_outputs import committed, read_dead_letters, read_embeddings
from musicrep.features import decode, log_mel
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
from musicrep.contracts.shards import FeatureRecord, serialize_record
from musicrep.features.windows import cut_windows, window_starts
from musicrep.manifest import read_manifest
from musicrep.pipelines import embed as embed_job

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
BATCH = ["--batch-size", "8"]
DURATIONS_S = {"long": 61.3, "short": 2.2}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    rng = np.random.default_rng(5)
    for track_id, duration_s in DURATIONS_S.items():
        n = int(duration_s * 22050)
        audio = 0.3 * rng.standard_normal(n).astype(np.float32) * np.sin(np.arange(n) / 3000.0) + tone(330, duration_s, 22050, amplitude=0.2)
        write_audio(str(root / f"{track_id}.flac"), audio, 22050)
    return root


def whole_log_mel(path) -> np.ndarray:
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        return log_mel(decode(path.read_bytes()))


def write_shard(path, records: list[FeatureRecord], *, version_1: bool = False) -> None:
    with tf.io.TFRecordWriter(str(path), options="GZIP") as writer:
        for record in records:
            serialized = serialize_record(record, dtype="float32")
            if version_1:  # as musicrep-shard-1 wrote it: no segment fields
                example = tf.train.Example.FromString(serialized)
                for key in ("frame_offset", "final"):
                    del example.features.feature[key]
                example.features.feature["schema_version"].bytes_list.value[:] = [b"musicrep-shard-1"]
                serialized = example.SerializeToString()
            writer.write(serialized)


def records_of(catalog, *, segment_frames: int | None) -> list[FeatureRecord]:
    records = []
    for track_id, duration_s in DURATIONS_S.items():
        path = catalog / f"{track_id}.flac"
        whole = FeatureRecord(
            track_id=track_id, uri=str(path), content_sha256="0" * 64, sample_rate=16000, duration_s=duration_s,
            log_mel=whole_log_mel(path), feature_config=DEFAULT_FEATURE_CONFIG.to_json(),
            feature_version=DEFAULT_FEATURE_CONFIG.version,
        )
        size = segment_frames or whole.n_frames
        for offset in range(0, whole.n_frames, size):
            frames = whole.log_mel[offset : offset + size]
            records.append(dataclasses.replace(whole, log_mel=frames, frame_offset=offset, final=offset + size >= whole.n_frames))
    return records


def bare_embedding(model, features: np.ndarray, *, batch_size: int = 8, max_windows=None) -> tuple[np.ndarray, int]:
    """Every window of the whole log-mel cut at once, model calls of `batch_size`
    (zero-padded, as the job's handler), one mean over all windows."""
    starts, length = window_starts(features.shape[0], window_frames=300, hop_frames=200, max_windows=max_windows, min_frames=16)
    windows = cut_windows(features, starts, length)
    out = []
    for begin in range(0, len(windows), batch_size):
        batch = windows[begin : begin + batch_size]
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch), *batch.shape[1:]), np.float32)])
        out.append(np.asarray(model(padded, training=False))[: len(batch)])
    return np.concatenate(out).mean(axis=0), len(starts)


@pytest.fixture(scope="module")
def model(tiny_model_uri):
    return musicrep.model.load(tiny_model_uri)


def test_segmented_shards_embed_as_one_array_and_as_version_1_shards(catalog, tiny_model_uri, model, tmp_path):
    # 777-frame segments: the long track is 8 records and most cuts fall inside a window.
    segmented, old = tmp_path / "seg" / "features-0.tfrecord.gz", tmp_path / "old" / "features-0.tfrecord.gz"
    segmented.parent.mkdir(), old.parent.mkdir()
    write_shard(segmented, records_of(catalog, segment_frames=777))
    write_shard(old, records_of(catalog, segment_frames=None), version_1=True)
    outputs = {}
    for name, shard in (("seg", segmented), ("old", old)):
        out = str(tmp_path / f"out-{name}")
        result = embed_job.run(["--features", str(shard), "--model", tiny_model_uri, "--output", out, *BATCH, *IN_MEMORY])
        outputs[name] = read_embeddings(out)
        assert (result.tracks_in, result.tracks_out, result.tracks_failed) == (len(DURATIONS_S), len(DURATIONS_S), 0)
        written = glob.glob(f"{out}/embeddings-*.parquet") + glob.glob(f"{out}/errors-*.jsonl")
        assert sorted(result.committed) == sorted(os.path.basename(p) for p in written)
    for track_id in DURATIONS_S:
        expected, n_windows = bare_embedding(model, whole_log_mel(catalog / f"{track_id}.flac"))
        for table in outputs.values():
            row = table.loc[track_id]
            assert row["n_windows"] == n_windows
            assert row["duration_s"] == pytest.approx(DURATIONS_S[track_id], abs=1e-3)
            np.testing.assert_allclose(np.asarray(row["embedding"]), expected, rtol=0, atol=1e-6)
    assert outputs["seg"].loc["long", "n_windows"] == 30


def test_max_duration_embeds_the_first_seconds_on_both_paths(catalog, tiny_model_uri, model, tmp_path):
    shard = tmp_path / "seg" / "features-0.tfrecord.gz"
    shard.parent.mkdir()
    write_shard(shard, records_of(catalog, segment_frames=777))
    cap = ["--max-duration-s", "20"]
    fused, staged = str(tmp_path / "fused"), str(tmp_path / "staged")
    for out, source in ((fused, ["--audio", f"{catalog}/*.flac"]), (staged, ["--features", str(shard)])):
        result = embed_job.run([*source, "--model", tiny_model_uri, "--output", out, *cap, *BATCH, *IN_MEMORY])
        assert result.tracks_out == len(DURATIONS_S) and result.counts["windows_embedded"] == sum(
            read_embeddings(out)["n_windows"])
    first_20_s = whole_log_mel(catalog / "long.flac")[: 1 + 20 * 100]
    expected, n_windows = bare_embedding(model, first_20_s)
    for out in (fused, staged):
        table = read_embeddings(out)
        row = table.loc["long"]
        assert row["n_windows"] == n_windows == 10
        assert row["duration_s"] == pytest.approx(20.0, abs=0.011)
        assert json.loads(row["window_spec"])["max_duration_s"] == 20.0
        # The fused job decodes only 20 s: its last frames' reflect padding differs.
        np.testing.assert_allclose(np.asarray(row["embedding"]), expected, rtol=0, atol=1e-6 if out == staged else 1e-3)
        assert table.loc["short", "duration_s"] == pytest.approx(2.2, abs=1e-3)


def test_a_track_over_its_time_budget_is_a_timeout_dead_letter(catalog, tiny_model_uri, tmp_path):
    out = str(tmp_path / "out")
    result = embed_job.run(
        ["--audio", f"{catalog}/*.flac", "--model", tiny_model_uri, "--output", out, "--time-budget-s", "1e-6", *IN_MEMORY]
    )
    assert (result.tracks_in, result.tracks_out, result.tracks_failed) == (2, 0, 2)
    errors = read_dead_letters(out)
    assert sorted((e["track_id"], e["stage"], e["error_type"]) for e in errors) == [
        ("long", "timeout", "TrackTimeoutError"), ("short", "timeout", "TrackTimeoutError")
    ]
    assert all(e["message"].startswith("gave up after ") for e in errors)


def test_a_track_failing_part_way_is_one_dead_letter_and_no_window_rows(catalog, tiny_model_uri, tmp_path):
    # The long track's last segment is missing: its first segments' windows go through the
    # model before the failure is known, and none of them may reach windows-*.parquet.
    shard = tmp_path / "cut" / "features-0.tfrecord.gz"
    shard.parent.mkdir()
    records = records_of(catalog, segment_frames=777)
    final_long = next(i for i, r in enumerate(records) if r.track_id == "long" and r.final)
    write_shard(shard, records[:final_long] + records[final_long + 1 :])
    out = str(tmp_path / "out")
    result = embed_job.run(["--features", str(shard), "--model", tiny_model_uri, "--output", out, "--per-window", *BATCH, *IN_MEMORY])
    assert (result.tracks_in, result.tracks_out, result.tracks_failed) == (2, 1, 1)
    assert list(read_embeddings(out).index) == ["short"]
    assert [(e["track_id"], e["stage"]) for e in read_dead_letters(out)] == [("long", "segments")]
    (path,) = committed(out, "windows")
    windows = pq.read_table(path).to_pandas()
    assert set(windows["track_id"]) == {"short"} and len(windows) == read_embeddings(out).loc["short", "n_windows"]
    assert read_manifest(out)["counts"]["windows"] == len(windows)
