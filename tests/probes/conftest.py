"""Planted probe data: Parquet embeddings as the embed job writes them plus a labels CSV.

Embeddings are label signal + Gaussian noise, so a probe can learn them; shuffling the
labels destroys the signal.
"""
from __future__ import annotations

import datetime
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from musicrep.contracts.schema import SCHEMA_VERSION
from musicrep.probes.keys import key_name

DIM = 16
SPLIT_SIZES = {"train": 480, "valid": 160, "test": 160}


def embedding_schema(dim: int) -> pa.Schema:
    """The embed job's Parquet columns (SPEC: one row per track) and its version tag."""
    return pa.schema([
        ("track_id", pa.string()), ("uri", pa.string()), ("content_sha256", pa.string()),
        ("duration_s", pa.float64()), ("n_windows", pa.int32()), ("window_s", pa.float32()),
        ("hop_s", pa.float32()), ("embedding", pa.list_(pa.float32(), dim)),
        ("model_id", pa.string()), ("feature_config_sha256", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC"))], metadata={"musicrep_schema": SCHEMA_VERSION})


def write_embedding_files(directory: pathlib.Path, track_ids: list[str], vectors: np.ndarray,
                          *, shards: int = 2, model_id: str = "planted-model") -> str:
    """Write `shards` files DIR/embeddings-SSSSS-of-NNNNN.parquet; returns their glob."""
    directory.mkdir(parents=True, exist_ok=True)
    n, dim = vectors.shape
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    for shard, rows in enumerate(np.array_split(np.arange(n), shards)):
        table = pa.table({
            "track_id": [track_ids[i] for i in rows],
            "uri": [f"file:///audio/{track_ids[i]}.wav" for i in rows],
            "content_sha256": ["0" * 64] * len(rows),
            "duration_s": np.full(len(rows), 30.0),
            "n_windows": np.full(len(rows), 19, np.int32),
            "window_s": np.full(len(rows), 3.0, np.float32),
            "hop_s": np.full(len(rows), 1.5, np.float32),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors[rows].astype(np.float32).ravel()), dim),
            "model_id": [model_id] * len(rows),
            "feature_config_sha256": ["f" * 64] * len(rows),
            "created_at": [now] * len(rows),
        }, schema=embedding_schema(dim))
        pq.write_table(table, directory / f"embeddings-{shard:05d}-of-{shards:05d}.parquet")
    return str(directory / "embeddings-*.parquet")


def plant(task: str, rng: np.random.Generator, *, shuffle: bool = False,
          noise: float = 1.0) -> tuple[list[str], np.ndarray, dict[str, list]]:
    """Track ids, embeddings and label columns (incl. `split`) for `task`."""
    n = sum(SPLIT_SIZES.values())
    track_ids = [f"trk{i:05d}" for i in range(n)]
    split = [name for name, size in SPLIT_SIZES.items() for _ in range(size)]
    if task == "multilabel":
        tags = ("rock", "jazz", "calm", "vocal", "drums", "piano")
        active = rng.random((n, len(tags))) < 0.3
        signal = active.astype(np.float64) @ (3.0 * rng.standard_normal((len(tags), DIM)))
        labels = {"tags": ["|".join(t for t, on in zip(tags, row) if on) for row in active]}
    elif task in ("multiclass", "key"):
        n_classes = 24 if task == "key" else 5
        classes = rng.integers(0, n_classes, n)
        signal = (4.0 * rng.standard_normal((n_classes, DIM)))[classes]
        labels = ({"key": [key_name(c) for c in classes]} if task == "key"
                  else {"instrument": [f"instr{c}" for c in classes]})
    else:
        signal = rng.standard_normal((n, DIM)) * 2.0
        weights = rng.standard_normal((DIM, 2))
        values = signal @ weights
        labels = {"valence": values[:, 0].tolist(), "arousal": values[:, 1].tolist()}
        # The best linear read-out reaches r² = 4 / (4 + noise²): ≈ 0.98 at this noise.
        noise = noise / 4
    vectors = (signal + noise * rng.standard_normal((n, DIM))).astype(np.float32)
    if shuffle:
        order = rng.permutation(n)
        labels = {name: [column[i] for i in order] for name, column in labels.items()}
    return track_ids, vectors, {"split": split, **labels}


def write_labels_csv(path: pathlib.Path, track_ids: list[str], columns: dict[str, list]) -> str:
    pa_csv.write_csv(pa.table({"track_id": track_ids, **columns}), path)
    return str(path)


@pytest.fixture
def planted_files(tmp_path, rng):
    """Factory: (task, shuffle=False) -> (embeddings glob, labels CSV path)."""

    def make(task: str, *, shuffle: bool = False) -> tuple[str, str]:
        track_ids, vectors, columns = plant(task, rng, shuffle=shuffle)
        pattern = write_embedding_files(tmp_path / f"emb-{task}", track_ids, vectors)
        labels = write_labels_csv(tmp_path / f"labels-{task}.csv", track_ids, columns)
        return pattern, labels

    return make


@pytest.fixture
def planted_arrays(rng):
    """Factory: (task, shuffle=False, noise=1.0) -> (track ids, embeddings, label columns)."""
    return lambda task, **kwargs: plant(task, rng, **kwargs)


@pytest.fixture
def embedding_writer():
    """`write_embedding_files` and `write_labels_csv`, for tests that shape their own data."""
    return write_embedding_files, write_labels_csv


@pytest.fixture(scope="module")
def planted_files_once(tmp_path_factory):
    """`planted_files` for module-scoped fixtures (a probe run shared by several tests)."""
    rng = np.random.default_rng(7)

    def make(task: str) -> tuple[str, str]:
        directory = tmp_path_factory.mktemp(task)
        track_ids, vectors, columns = plant(task, rng)
        return (write_embedding_files(directory / "emb", track_ids, vectors),
                write_labels_csv(directory / "labels.csv", track_ids, columns))

    return make
