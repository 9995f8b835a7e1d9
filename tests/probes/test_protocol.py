"""Planted data: every task type reaches near its ceiling; shuffled labels fall to chance."""
import numpy as np
import pytest

from musicrep.probes.data import DEFAULT_LABEL_COLUMNS, join_tracks, read_embeddings, read_labels
from musicrep.probes.presets import Grid, generic_preset
from musicrep.probes.protocol import ProbeSettings, bootstrap_interval, paired_difference, run_probe

# Small and quick: a 1×512 probe on 16-d embeddings learns the planted signal in 300 steps.
GRID = Grid(learning_rates=(3e-3,), steps=(300,), l2s=(0.0,))
COLUMNS = {**DEFAULT_LABEL_COLUMNS, "multiclass": ("instrument",)}

# (task, headline metric, at least with the signal, at most when shuffled). Chance levels:
# mAP ≈ tag rate 0.3; 5 classes 0.2; random keys (1 + .5 + .3 + .2) / 24 ≈ 0.08; r² ≤ 0.
CASES = [
    ("multilabel", "mean_average_precision", 0.95, 0.45),
    ("multilabel", "roc_auc", 0.97, 0.62),
    ("multiclass", "accuracy", 0.95, 0.35),
    ("key", "mirex_key_score", 0.9, 0.2),
    ("regression", "r2_valence", 0.85, 0.05),
]


def _probe(planted_files, task, *, shuffle, seeds=(0,), resamples=0):
    embeddings, labels = planted_files(task, shuffle=shuffle)
    data = join_tracks(read_embeddings(embeddings), read_labels(labels), task=task,
                       label_columns=COLUMNS[task])
    settings = ProbeSettings(preset=generic_preset(task), grid=GRID, seeds=seeds,
                             warmup_steps=30, bootstrap_resamples=resamples)
    return data, run_probe(data, settings)


@pytest.mark.parametrize("task", ["multilabel", "multiclass", "key", "regression"])
def test_planted_signal_near_ceiling_and_shuffled_at_chance(planted_files, task):
    _, planted = _probe(planted_files, task, shuffle=False)
    _, shuffled = _probe(planted_files, task, shuffle=True)
    for case_task, metric, ceiling, chance in CASES:
        if case_task == task:
            assert planted.summary(metric)[0] >= ceiling, (metric, planted.test[metric])
            assert shuffled.summary(metric)[0] <= chance, (metric, shuffled.test[metric])


def test_seeds_spread_and_bootstrap_interval(planted_files):
    data, result = _probe(planted_files, "multiclass", shuffle=False, seeds=(0, 1),
                          resamples=200)
    assert len(result.test["accuracy"]) == 2
    mean, spread = result.summary("accuracy")
    first, second = result.test["accuracy"]
    # Two seeds: mean and sample standard deviation |a − b| / √2.
    assert mean == pytest.approx((first + second) / 2)
    assert spread == pytest.approx(abs(first - second) / np.sqrt(2))
    # The seeds train different networks (a copied seed would give a spread of 0 by itself).
    assert not np.array_equal(result.test_predictions[0], result.test_predictions[1])
    low, high = result.intervals["accuracy"]
    assert low <= mean <= high and high - low < 0.2
    assert len(result.test_predictions) == 2
    assert result.test_predictions[0].shape == (len(data.track_ids["test"]), 5)


def test_bootstrap_interval_covers_the_metric_of_a_known_classifier(rng):
    # 70 % of 400 tracks right: the percentile interval is ≈ 0.7 ± 1.96·sqrt(.7·.3/400).
    y_true = rng.integers(0, 3, 400)
    correct = rng.permutation(400) < 280
    prediction = np.eye(3)[np.where(correct, y_true, (y_true + 1) % 3)]
    low, high = bootstrap_interval("multiclass", y_true, (prediction,), resamples=2000)["accuracy"]
    half_width = 1.96 * np.sqrt(0.7 * 0.3 / 400)
    assert low == pytest.approx(0.7 - half_width, abs=0.012)
    assert high == pytest.approx(0.7 + half_width, abs=0.012)


def test_paired_difference_sees_what_two_overlapping_intervals_hide(rng):
    # 120 tracks: model A right on 78 %, model B right on a subset of those, 70 %. Each
    # interval is about ±0.08 wide and they overlap; on the same tracks A never loses to
    # B, so the paired interval of A − B lies above 0. Reference: the difference of the
    # per-track scores (1 right, 0 wrong), resampled with numpy.
    n = 120
    y_true = rng.integers(0, 4, n)
    order = rng.permutation(n)
    right_a, right_b = order < 94, order < 84
    a = np.eye(4)[np.where(right_a, y_true, (y_true + 1) % 4)]
    b = np.eye(4)[np.where(right_b, y_true, (y_true + 2) % 4)]
    intervals = [bootstrap_interval("multiclass", y_true, (p,), resamples=1000)["accuracy"] for p in (a, b)]
    assert intervals[1][1] > intervals[0][0]  # they overlap
    difference, (low, high) = paired_difference("multiclass", y_true, (a,), (b,), metric="accuracy",
                                                resamples=1000)
    assert difference == pytest.approx(10 / 120)
    assert 0 < low < difference < high
    draws = np.random.default_rng(0).integers(0, n, (1000, n))
    per_track = right_a.astype(float) - right_b.astype(float)
    reference = np.percentile(per_track[draws].mean(axis=1), [2.5, 97.5])
    np.testing.assert_allclose([low, high], reference, atol=1e-12)
    # Several seeds: the seed means are compared.
    difference, _ = paired_difference("multiclass", y_true, (a, b), (b, b), metric="accuracy", resamples=10)
    assert difference == pytest.approx(5 / 120)
