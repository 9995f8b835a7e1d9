"""Probe metrics against scikit-learn and mir_eval, on random and edge-case inputs."""
import itertools

import mir_eval
import numpy as np
import pytest
from sklearn import metrics as skm

from musicrep.errors import ConfigError, MusicrepError
from musicrep.probes import metrics
from musicrep.probes.keys import N_KEYS, key_name, parse_key

# Both sides sum the same float64 terms in different orders: a few ulps apart at most.
TOLERANCE = 1e-12


def _multilabel(rng, n, labels, *, ties=False):
    y_true = (rng.random((n, labels)) < rng.uniform(0.05, 0.6, labels)).astype(int)
    y_score = rng.random((n, labels))
    if ties:  # coarse scores: many equal values, the hard case for AP and AUC
        y_score = np.round(y_score * 4) / 4
    return y_true, y_score


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n,labels", [(40, 1), (200, 7), (1000, 25)])
def test_label_metrics_match_sklearn_macro(rng, n, labels, ties):
    y_true, y_score = _multilabel(rng, n, labels, ties=ties)
    keep = metrics.evaluable_labels(y_true)
    assert metrics.mean_average_precision(y_true, y_score) == pytest.approx(
        skm.average_precision_score(y_true[:, keep], y_score[:, keep], average="macro"),
        abs=TOLERANCE)
    assert metrics.roc_auc(y_true, y_score) == pytest.approx(
        skm.roc_auc_score(y_true[:, keep], y_score[:, keep], average="macro"), abs=TOLERANCE)


def test_labels_without_positive_or_negative_are_left_out(rng):
    y_true, y_score = _multilabel(rng, 100, 6)
    y_true[:, 1] = 0  # no positive
    y_true[:, 4] = 1  # no negative
    keep = np.array([True, False, True, True, False, True])
    np.testing.assert_array_equal(metrics.evaluable_labels(y_true), keep)
    assert metrics.mean_average_precision(y_true, y_score) == pytest.approx(
        skm.average_precision_score(y_true[:, keep], y_score[:, keep]), abs=TOLERANCE)
    assert metrics.roc_auc(y_true, y_score) == pytest.approx(
        skm.roc_auc_score(y_true[:, keep], y_score[:, keep]), abs=TOLERANCE)


def test_label_metrics_edge_cases():
    y_true = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    perfect = y_true.astype(float)
    assert metrics.mean_average_precision(y_true, perfect) == 1.0
    assert metrics.roc_auc(y_true, perfect) == 1.0
    assert metrics.roc_auc(y_true, 1 - perfect) == 0.0
    constant = np.full((4, 2), 0.5)  # every track tied: AUC one half, AP the base rate
    assert metrics.roc_auc(y_true, constant) == 0.5
    assert metrics.mean_average_precision(y_true, constant) == pytest.approx(
        skm.average_precision_score(y_true, constant))
    with pytest.raises(MusicrepError, match="no label has both a positive and a negative"):
        metrics.mean_average_precision(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(MusicrepError, match=r"matching \(tracks, labels\)"):
        metrics.roc_auc(np.ones((3, 2)), np.zeros((3, 3)))


def test_accuracy_and_r2_match_sklearn(rng):
    y_true, y_pred = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    assert metrics.accuracy(y_true, y_pred) == skm.accuracy_score(y_true, y_pred)
    target = rng.standard_normal(300)
    for prediction in (target + 0.3 * rng.standard_normal(300), rng.standard_normal(300),
                       np.full(300, 5.0), target):
        assert metrics.r2(target, prediction) == pytest.approx(
            skm.r2_score(target, prediction), abs=TOLERANCE)
    constant = np.full(10, 2.0)  # sklearn's convention for a constant target
    assert metrics.r2(constant, constant) == skm.r2_score(constant, constant) == 1.0
    assert metrics.r2(constant, constant + 1) == skm.r2_score(constant, constant + 1) == 0.0
    with pytest.raises(MusicrepError, match="equal, non-empty"):
        metrics.accuracy(np.array([]), np.array([]))


ALL_KEYS = [key_name(index) for index in range(N_KEYS)]


def test_mirex_key_score_equals_mir_eval_on_every_pair():
    pairs = list(itertools.product(ALL_KEYS, ALL_KEYS))
    reference, estimate = zip(*pairs)
    expected = [mir_eval.key.weighted_score(ref, est) for ref, est in pairs]
    np.testing.assert_array_equal(metrics.mirex_key_scores(np.array(reference),
                                                           np.array(estimate)), expected)
    assert metrics.mirex_key_score(np.array(reference), np.array(estimate)) == pytest.approx(
        np.mean(expected))


def test_descending_fifth_switch():
    pairs = list(itertools.product(range(N_KEYS), range(N_KEYS)))
    reference, estimate = map(np.array, zip(*pairs))
    # MIREX since 2017: as mir_eval, plus 0.5 where the estimate is a fifth below.
    expected = [max(mir_eval.key.weighted_score(key_name(r), key_name(e)),
                    0.5 if (r >= 12) == (e >= 12) and (e - r) % 12 == 5 else 0.0)
                for r, e in pairs]
    np.testing.assert_array_equal(
        metrics.mirex_key_scores(reference, estimate, allow_descending_fifths=True), expected)
    assert metrics.mirex_key_score(["C major"], ["F major"]) == 0.0
    assert metrics.mirex_key_score(["C major"], ["F major"], allow_descending_fifths=True) == 0.5


def test_mirex_key_score_random_strings_in_other_spellings(rng):
    spellings = {"C# major": "Db:maj", "A minor": "a:min", "F# minor": "f#:min",
                 "Bb major": "Bb:maj", "Eb minor": "D# minor", "G major": "g major"}
    names = list(spellings)
    reference = [names[i] for i in rng.integers(0, len(names), 200)]
    estimate = [names[i] for i in rng.integers(0, len(names), 200)]
    expected = np.mean([mir_eval.key.weighted_score(r, e) for r, e in zip(reference, estimate)])
    respelled = np.array([spellings[e] for e in estimate])
    assert metrics.mirex_key_score(np.array(reference), respelled) == pytest.approx(expected)


@pytest.mark.parametrize("text,index", [("C major", 0), ("A minor", 21), ("Bb:maj", 10),
                                        ("f#:min", 18), ("Cb major", 11), ("B# minor", 12)])
def test_parse_key(text, index):
    assert parse_key(text) == index


@pytest.mark.parametrize("text", ["H major", "C", "C dorian", "", "Am"])
def test_parse_key_refuses_with_the_value(text):
    with pytest.raises(ConfigError, match=f"cannot read key {text!r}"):
        parse_key(text)
