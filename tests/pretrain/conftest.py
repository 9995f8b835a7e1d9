"""Synthetic log-mel shards for the pre-training tests (written with the shard writer)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.contracts.shards import FeatureRecord, serialize_record

SHARD_NAME = "features-{index:05d}-of-{count:05d}.tfrecord.gz"


def write_shards(
    directory: str,
    tracks: list[tuple[str, np.ndarray]],
    *,
    n_shards: int = 1,
    dtype: str = "float32",
    features: FeatureConfig = DEFAULT_FEATURE_CONFIG,
) -> str:
    """Writes (track_id, log_mel [frames, n_mels]) round-robin into n_shards gzip shards as
    made with the front end `features`; returns the glob."""

    os.makedirs(directory, exist_ok=True)
    writers = [
        tf.io.TFRecordWriter(os.path.join(directory, SHARD_NAME.format(index=i, count=n_shards)), options="GZIP")
        for i in range(n_shards)
    ]
    for index, (track_id, log_mel) in enumerate(tracks):
        record = FeatureRecord(
            track_id=track_id,
            uri=f"synthetic://{track_id}",
            content_sha256="0" * 64,
            sample_rate=features.sample_rate_hz,
            duration_s=log_mel.shape[0] / features.frames_per_second,
            log_mel=log_mel,
            feature_config=features.to_json(),
            feature_version=features.version,
        )
        writers[index % n_shards].write(serialize_record(record, dtype=dtype))
    for writer in writers:
        writer.close()
    return os.path.join(directory, "features-*.tfrecord.gz")


def indexed_log_mel(track: int, n_frames: int) -> np.ndarray:
    """Values that name their position: track·10⁶ + frame·100 + band (exact in float32)."""
    frames = np.arange(n_frames, dtype=np.float64)[:, None] * 100
    bands = np.arange(96, dtype=np.float64)[None, :]
    return (track * 1e6 + frames + bands).astype(np.float32)


@pytest.fixture(scope="session")
def shard_writer():
    """`write_shards(directory, tracks, n_shards=1, dtype="float32") -> glob` for tests."""
    return write_shards


@pytest.fixture(scope="session")
def indexed():
    """`indexed_log_mel(track, n_frames)`: log-mels whose values name their position."""
    return indexed_log_mel


@pytest.fixture(scope="session")
def learnable_catalog(tmp_path_factory) -> dict:
    """48 tracks of 3 classes: each class brightens its own third of the mel bands, each
    track has its own band pattern on top, plus noise. Labels: the class and a shared tag."""
    rng = np.random.default_rng(7)
    directory = tmp_path_factory.mktemp("learnable")
    tracks, rows = [], []
    for i in range(48):
        cls = i % 3
        profile = np.zeros(96, np.float32)
        profile[cls * 32 : (cls + 1) * 32] = 1.5
        profile += 2.0 * rng.random(96, dtype=np.float32)
        frames = int(rng.integers(350, 600))
        log_mel = profile[None, :] + 0.3 * rng.standard_normal((frames, 96)).astype(np.float32)
        tracks.append((f"track{i:02d}", np.abs(log_mel)))
        rows.append(f"track{i:02d},{'abc'[cls]}|music\n")
    pattern = write_shards(str(directory / "shards"), tracks, n_shards=2, dtype="float16")
    labels = directory / "labels.csv"
    labels.write_text("track_id,tags\n" + "".join(rows))
    return {"pattern": pattern, "labels": str(labels), "root": directory}
