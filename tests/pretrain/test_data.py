"""The snippet sampler: no padding, pair distances, with-replacement draws, short/unlabelled tracks."""
from __future__ import annotations

import collections
import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from musicrep.errors import ConfigError
from musicrep.model.data import SamplerConfig, max_start_offset, read_labels, sample_snippets
from musicrep.model.sampling import SamplingConfig

LENGTHS = [200, 299, 300, 301, 450, 640, 900, 1300, 250, 777]  # three shorter than a snippet
SHORT = {i for i, n in enumerate(LENGTHS) if n < 300}


@pytest.fixture(scope="module")
def indexed_shards(tmp_path_factory, shard_writer, indexed):
    directory = tmp_path_factory.mktemp("indexed")
    tracks = [(f"t{i}", indexed(i, n)) for i, n in enumerate(LENGTHS)]
    return shard_writer(str(directory), tracks, n_shards=1, dtype="float32")


def take(dataset, n_batches):
    batches = [
        {key: value.numpy() for key, value in batch.items()} for batch in dataset.take(n_batches)
    ]
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}


def track_index(track_ids):
    return np.array([int(t.decode()[1:]) for t in track_ids])


def test_snippets_are_unpadded_slices_of_the_track_frequency_first(indexed_shards, indexed):
    draws = take(sample_snippets(indexed_shards, SamplerConfig(batch_size=16, pairs=True, seed=3)), 12)
    assert draws["log_mel"].shape == (192, 96, 300) and draws["log_mel"].dtype == np.float32
    for key, start_key in (("log_mel", "start"), ("log_mel_b", "start_b")):
        for row, (track, start) in enumerate(zip(track_index(draws["track_id"]), draws[start_key])):
            assert 0 <= start <= LENGTHS[track] - 300
            expected = indexed(track, LENGTHS[track])[start : start + 300].T
            np.testing.assert_array_equal(draws[key][row], expected)


def test_float16_shards_decode(tmp_path, shard_writer, indexed):
    values = (indexed(0, 400) % 1000 / 250).astype(np.float16).astype(np.float32)  # exact in float16
    pattern = shard_writer(str(tmp_path), [("a", values)], dtype="float16")
    draws = take(sample_snippets(pattern, SamplerConfig(batch_size=4, sampling=SamplingConfig(shuffle_buffer=1))), 2)
    for row, start in enumerate(draws["start"]):
        np.testing.assert_array_equal(draws["log_mel"][row], values[start : start + 300].T)


def test_pair_centres_are_closer_than_the_limit(indexed_shards):
    config = SamplerConfig(batch_size=64, pairs=True, seed=5, sampling=SamplingConfig(positive_max_distance_s=2.0))
    draws = take(sample_snippets(indexed_shards, config), 20)
    distance = np.abs(draws["start"] - draws["start_b"])
    assert max_start_offset(2.0, frames_per_second=100.0) == config.max_start_offset() == 199
    assert distance.max() <= 199  # centres strictly < 2 s (200 frames) apart
    assert distance.max() >= 150  # and the whole allowed range is used
    assert (distance == 0).any() or distance.min() < 20


def test_clip_mode_draws_both_views_anywhere_in_the_clip(indexed_shards):
    config = SamplerConfig(batch_size=64, pairs=True, seed=5, sampling=SamplingConfig(positive_max_distance_s=None))
    draws = take(sample_snippets(indexed_shards, config), 20)
    tracks = track_index(draws["track_id"])
    long = tracks == 7  # 1300 frames: starts 0 … 1000
    assert np.abs(draws["start"] - draws["start_b"])[long].max() > 600
    assert (draws["start_b"] <= np.array(LENGTHS)[tracks] - 300).all()


def test_short_tracks_are_never_drawn_and_are_counted(indexed_shards):
    draws = take(sample_snippets(indexed_shards, SamplerConfig(batch_size=8, seed=1, sampling=SamplingConfig(shuffle_buffer=1))), 40)
    assert not set(track_index(draws["track_id"])) & SHORT
    # One shard, so every pass reads the tracks in file order: the running counts are exact.
    for read, short in zip(draws["tracks_read"], draws["tracks_short"]):
        passes, within = divmod(int(read), len(LENGTHS))
        assert short == passes * len(SHORT) + len(SHORT & set(range(within)))
    assert (draws["tracks_unlabelled"] == 0).all()


def test_tracks_are_drawn_uniformly_with_replacement(tmp_path, shard_writer, rng):
    n_tracks = 25
    tracks = [(f"t{i}", rng.random((300 + 7 * i, 96), dtype=np.float32)) for i in range(n_tracks)]
    pattern = shard_writer(str(tmp_path), tracks, n_shards=3)
    draws = take(sample_snippets(pattern, SamplerConfig(batch_size=100, seed=11, sampling=SamplingConfig(shuffle_buffer=1))), 60)
    # Draws per record read: Poisson(1), the streaming form of n draws with replacement from n.
    reads = draws["tracks_read"]
    complete = reads < reads.max()  # the last record's draws may be cut by the batch boundary
    per_read = collections.Counter(reads[complete])
    n_reads = int(reads.max()) - 1
    multiplicity = np.array([per_read.get(r, 0) for r in range(1, n_reads + 1)])
    observed = np.bincount(np.minimum(multiplicity, 3), minlength=4)
    poisson = np.array([math.exp(-1), math.exp(-1), math.exp(-1) / 2, 0.0])
    poisson[3] = 1 - poisson[:3].sum()
    assert stats.chisquare(observed, poisson * n_reads).pvalue > 1e-3
    assert observed[0] > 0 and observed[2] > 0  # some tracks skipped, some drawn twice in a pass
    # Every track equally likely overall.
    counts = np.bincount(track_index(draws["track_id"]), minlength=n_tracks)
    assert stats.chisquare(counts).pvalue > 1e-3
    # Over P passes a track's count is ~Poisson(P): dispersion ≈ 1, not 0 as with epochs.
    assert 0.4 < counts.var() / counts.mean() < 2.0


def test_more_draws_per_track_read(indexed_shards):
    config = SamplerConfig(batch_size=64, seed=4, sampling=SamplingConfig(shuffle_buffer=1, draws_per_track=4.0))
    draws = take(sample_snippets(indexed_shards, config), 10)
    reads = draws["tracks_read"]
    usable_reads = reads.max() * (len(LENGTHS) - len(SHORT)) / len(LENGTHS)
    assert len(reads) / usable_reads == pytest.approx(4.0, rel=0.2)


def test_the_stream_is_a_function_of_the_seed(indexed_shards):
    def first(seed):
        return take(sample_snippets(indexed_shards, SamplerConfig(batch_size=8, pairs=True, seed=seed)), 3)

    a, b, c = first(1), first(1), first(2)
    np.testing.assert_array_equal(a["log_mel_b"], b["log_mel_b"])
    assert not np.array_equal(a["start"], c["start"])


def test_supervised_labels_are_multi_hot_and_unlabelled_tracks_skipped(indexed_shards, tmp_path):
    labels_path = tmp_path / "labels.csv"
    # t7 has no row (skipped, counted), t6 a row without tags (all-negative).
    labels_path.write_text("track_id,tags\nt3,rock|sad\nt4,rock\nt5,jazz\nt6,\nt9,sad|jazz\n")
    labels = read_labels(str(labels_path))
    assert labels.vocabulary == ("jazz", "rock", "sad")
    config = SamplerConfig(batch_size=8, seed=2, sampling=SamplingConfig(shuffle_buffer=1))
    draws = take(sample_snippets(indexed_shards, config, labels=labels), 20)
    expected = {3: [0, 1, 1], 4: [0, 1, 0], 5: [1, 0, 0], 6: [0, 0, 0], 9: [1, 0, 1]}
    tracks = track_index(draws["track_id"])
    assert set(tracks) <= set(expected)
    for track, row in zip(tracks, draws["labels"]):
        np.testing.assert_array_equal(row, expected[track])
    # Per pass: t7 and t8 are long enough but unlabelled; t0, t1, t8 are short (t8 counts as short).
    last = draws["tracks_read"].argmax()
    passes = draws["tracks_read"][last] // len(LENGTHS)
    assert draws["tracks_unlabelled"][last] >= passes * 2


def test_parquet_labels_with_lists(tmp_path):
    import pandas as pd

    path = tmp_path / "labels.parquet"
    pd.DataFrame({"track_id": ["a", "b"], "tags": [["x", "y"], []]}).to_parquet(path)
    labels = read_labels(str(path))
    assert labels.vocabulary == ("x", "y")
    np.testing.assert_array_equal(labels.multi_hot(), [[1, 1], [0, 0]])


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(ConfigError, match="no file matches"):
        sample_snippets(str(tmp_path / "none-*.gz"), SamplerConfig(batch_size=2))
    with pytest.raises(ConfigError, match="positive_max_distance_s must be > 0, got -1"):
        SamplerConfig(batch_size=2, sampling=SamplingConfig(positive_max_distance_s=-1))
    (tmp_path / "l.csv").write_text("track,tags\n")
    with pytest.raises(ConfigError, match=r"lack column\(s\) \['track_id'\]; columns: \['track', 'tags'\]"):
        read_labels(str(tmp_path / "l.csv"))
