"""Probe metrics, in numpy only (scikit-learn and mir_eval are the tests' references).

Label-averaged metrics (`mean_average_precision`, `roc_auc`) are macro averages over the
labels that have both a positive and a negative in `y_true`; the others cannot be scored
and are left out — `evaluable_labels` tells which, so a report can count them.
"""
from __future__ import annotations

import numpy as np

from musicrep.errors import MusicrepError
from musicrep.probes.keys import N_KEYS, parse_keys

# MIREX key weights (mir_eval.key.weighted_score): same key, fifth, relative, parallel.
KEY_WEIGHT_SAME = 1.0
KEY_WEIGHT_FIFTH = 0.5
KEY_WEIGHT_RELATIVE = 0.3
KEY_WEIGHT_PARALLEL = 0.2


def _as_label_matrix(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.ndim == 1:
        y_true, y_score = y_true[:, None], y_score.reshape(-1, 1)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise MusicrepError(f"y_true {y_true.shape} and y_score {y_score.shape} must be "
                            "matching (tracks, labels) arrays")
    return y_true.astype(bool), y_score


def evaluable_labels(y_true: np.ndarray) -> np.ndarray:
    """Boolean mask over labels (columns) that have at least one positive and one negative."""
    y_true = np.asarray(y_true, dtype=bool)
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < y_true.shape[0])


def _macro(per_label: np.ndarray, mask: np.ndarray, name: str) -> float:
    if not mask.any():
        raise MusicrepError(f"{name}: no label has both a positive and a negative track")
    return float(per_label[mask].mean())


def _average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Step-wise AP over distinct thresholds (ties form one step), as scikit-learn does."""
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    # The last index of each run of equal scores is where a threshold's counts are read.
    ends = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    true_positives = np.cumsum(positive)[ends]
    precision = true_positives / (ends + 1)
    recall_gain = np.diff(np.r_[0, true_positives]) / true_positives[-1]
    return float(np.sum(recall_gain * precision))


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (ties count one half)."""
    ranks = _average_ranks(score)
    n_pos = positive.sum()
    n_neg = positive.size - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], values.size] - 1
    ranks = np.empty(values.size)
    ranks[order] = (first[group] + last[group]) / 2 + 1
    return ranks


def mean_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Macro mean average precision over evaluable labels.

    Args:
        y_true: (tracks, labels) 0/1 targets (or (tracks,) for one label).
        y_score: scores of the same shape; higher means more likely positive.
    """
    return _macro_over_labels(_average_precision, y_true, y_score, "mean_average_precision")


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Macro ROC-AUC over evaluable labels; arguments as `mean_average_precision`."""
    return _macro_over_labels(_auc, y_true, y_score, "roc_auc")


def average_precision_per_label(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """(labels,) average precision of each label; NaN where a label is not evaluable."""
    return _per_label(_average_precision, *_as_label_matrix(y_true, y_score))


def roc_auc_per_label(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """(labels,) ROC-AUC of each label; NaN where a label is not evaluable."""
    return _per_label(_auc, *_as_label_matrix(y_true, y_score))


def _per_label(metric, y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    mask = evaluable_labels(y_true)
    return np.array([metric(y_true[:, j], y_score[:, j]) if mask[j] else np.nan
                     for j in range(y_true.shape[1])])


def _macro_over_labels(metric, y_true: np.ndarray, y_score: np.ndarray, name: str) -> float:
    """`metric(y_true_j, y_score_j)` per evaluable label j, macro-averaged by `_macro`."""
    y_true, y_score = _as_label_matrix(y_true, y_score)
    return _macro(_per_label(metric, y_true, y_score), evaluable_labels(y_true), name)


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of tracks whose predicted class equals the true class."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size == 0:
        raise MusicrepError(f"accuracy needs two equal, non-empty 1-D arrays; got "
                            f"{y_true.shape} and {y_pred.shape}")
    return float(np.mean(y_true == y_pred))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination of one target; like scikit-learn's `r2_score`, a
    constant `y_true` scores 1.0 when predicted exactly and 0.0 otherwise."""
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1 or y_true.size < 2:
        raise MusicrepError(f"r2 needs two equal 1-D arrays of 2+ values; got "
                            f"{y_true.shape} and {y_pred.shape}")
    residual = np.sum((y_true - y_pred) ** 2)
    total = np.sum((y_true - y_true.mean()) ** 2)
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return float(1.0 - residual / total)


def _key_indices(keys: np.ndarray) -> np.ndarray:
    keys = np.asarray(keys)
    indices = keys.astype(np.int64) if keys.dtype.kind in "iu" else parse_keys(keys.tolist())
    if indices.size and (indices.min() < 0 or indices.max() >= N_KEYS):
        raise MusicrepError(f"key indices must lie in 0..{N_KEYS - 1}")
    return indices


# How an estimated key relates to the reference (mir_eval's classes), in the order of
# `key_relations`' codes, and the MIREX weight of each.
KEY_RELATIONS = ("same", "fifth", "relative", "parallel", "other")
KEY_RELATION_WEIGHTS = (KEY_WEIGHT_SAME, KEY_WEIGHT_FIFTH, KEY_WEIGHT_RELATIVE,
                        KEY_WEIGHT_PARALLEL, 0.0)


def key_relations(reference: np.ndarray, estimate: np.ndarray, *,
                  allow_descending_fifths: bool = False) -> np.ndarray:
    """Per track, the index in KEY_RELATIONS of how `estimate` relates to `reference`:
    same key; a fifth above the reference (same mode); relative major/minor; parallel
    major/minor; anything else. Arguments as `mirex_key_scores`."""
    reference, estimate = _key_indices(reference), _key_indices(estimate)
    if reference.shape != estimate.shape or reference.ndim != 1:
        raise MusicrepError(f"reference {reference.shape} and estimate {estimate.shape} "
                            "must be equal 1-D sequences")
    ref_tonic, ref_minor = reference % 12, reference >= 12
    est_tonic, est_minor = estimate % 12, estimate >= 12
    interval = (est_tonic - ref_tonic) % 12
    same_mode = ref_minor == est_minor
    fifth = same_mode & ((interval == 7) | (allow_descending_fifths & (interval == 5)))
    # The relative key shares the key signature: minor a minor third below the major tonic.
    relative = ~same_mode & np.where(ref_minor, interval == 3, interval == 9)
    parallel = ~same_mode & (interval == 0)
    return np.select([same_mode & (interval == 0), fifth, relative, parallel], [0, 1, 2, 3],
                     default=len(KEY_RELATIONS) - 1)


def mirex_key_scores(reference: np.ndarray, estimate: np.ndarray, *,
                     allow_descending_fifths: bool = False) -> np.ndarray:
    """Per-track MIREX weight: 1.0 same key, 0.5 estimate a fifth above the reference (same
    mode), 0.3 relative major/minor, 0.2 parallel major/minor, else 0.

    Keys are key strings (`C major`, `Bb:maj`) or class indices (`musicrep.probes.keys`).
    `allow_descending_fifths` also credits a fifth below with 0.5, as MIREX has done
    since 2017; without it the rule is mir_eval's `key.weighted_score`.
    """
    codes = key_relations(reference, estimate, allow_descending_fifths=allow_descending_fifths)
    return np.asarray(KEY_RELATION_WEIGHTS)[codes]


def mirex_key_score(reference: np.ndarray, estimate: np.ndarray, *,
                    allow_descending_fifths: bool = False) -> float:
    """Mean of `mirex_key_scores` (the MIREX weighted key accuracy)."""
    scores = mirex_key_scores(reference, estimate, allow_descending_fifths=allow_descending_fifths)
    if scores.size == 0:
        raise MusicrepError("mirex_key_score needs at least one track")
    return float(scores.mean())


def key_rule(allow_descending_fifths: bool) -> str:
    """One line that says which key rule scored a report."""
    if allow_descending_fifths:
        return "MIREX since 2017: mir_eval weighted_score plus 0.5 for a descending fifth"
    return "mir_eval key.weighted_score: 0.5 only for the fifth above the reference"
