"""The probe protocol: tune on `valid`, score on `test` over several seeds, bootstrap.

1. Every point of the grid (learning rate × steps × L2) is trained with the first seed
   and scored on `valid` with the task's selection metric.
2. The best point is trained with every seed and scored on `test`: mean and spread
   (sample standard deviation) over seeds.
3. A bootstrap over test tracks (the same resamples for every seed) gives a 95 % interval
   of the seed-averaged metric.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import keras
import numpy as np
import tensorflow as tf

from musicrep.errors import MusicrepError
from musicrep.probes import metrics
from musicrep.probes.data import ProbeData
from musicrep.probes.model import FitSummary, build_probe, fit_probe, predict_probe
from musicrep.probes.presets import Grid, HyperParameters, ProbePreset

logger = logging.getLogger(__name__)

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """Everything about a probe run that is not data.

    Attributes:
        preset: network, batch size and task (Table 2 or `presets.generic_preset`).
        grid: hyper-parameters tried on `valid`.
        seeds: seeds of the final runs; the first also drives the grid search.
        warmup_steps: warm-up override; None keeps the preset's.
        bootstrap_resamples: bootstrap resamples of the test tracks (0 disables).
        allow_descending_fifths: key scoring rule (see `metrics.mirex_key_scores`).
    """

    preset: ProbePreset
    grid: Grid
    seeds: tuple[int, ...] = (0, 1, 2)
    warmup_steps: int | None = None
    bootstrap_resamples: int = 1000
    allow_descending_fifths: bool = False

    @property
    def effective_warmup_steps(self) -> int:
        return self.preset.warmup_steps if self.warmup_steps is None else self.warmup_steps


def selection_metric(task: str) -> str:
    """The metric that picks the grid point on `valid`."""
    return {"multilabel": "mean_average_precision", "multiclass": "accuracy",
            "key": "mirex_key_score", "regression": "r2_mean"}[task]


def score(task: str, y_true: np.ndarray, prediction: np.ndarray, *,
          target_names: tuple[str, ...] = (), allow_descending_fifths: bool = False
          ) -> dict[str, float]:
    """Every metric of `task` for one set of predictions (`model.predict_probe` output;
    regression predictions in the units of `y_true`)."""
    if task == "multilabel":
        return {"mean_average_precision": metrics.mean_average_precision(y_true, prediction),
                "roc_auc": metrics.roc_auc(y_true, prediction)}
    if task == "multiclass":
        return {"accuracy": metrics.accuracy(y_true, prediction.argmax(axis=1))}
    if task == "key":
        estimate = prediction.argmax(axis=1)
        return {"mirex_key_score": metrics.mirex_key_score(
                    y_true, estimate, allow_descending_fifths=allow_descending_fifths),
                "accuracy": metrics.accuracy(y_true, estimate)}
    per_column = {f"r2_{name}": metrics.r2(y_true[:, j], prediction[:, j])
                  for j, name in enumerate(target_names)}
    return {**per_column, "r2_mean": float(np.mean(list(per_column.values())))}


@dataclasses.dataclass(frozen=True)
class GridPoint:
    """One grid point trained with the first seed: its valid metrics and learning curve
    ((step, training loss, valid loss) as `model.FitSummary.curve`)."""

    hyper: HyperParameters
    valid: dict[str, float]
    fit_seconds: float
    curve: tuple[tuple[int, float, float | None], ...] = ()


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """The outcome of `run_probe` (what the report shows).

    Attributes:
        grid: every grid point with its `valid` metrics (first seed).
        selected: the grid point chosen on `valid`.
        test: metric -> per-seed test values, in the order of `settings.seeds`.
        intervals: metric -> (low, high) bootstrap interval of the seed mean.
        seed_intervals: metric -> per seed, (low, high) bootstrap interval of that seed.
        test_predictions: per seed, (n_test, outputs) predictions (regression in label units).
        labels_left_out: split -> labels with no positive or no negative (multilabel).
    """

    settings: ProbeSettings
    grid: tuple[GridPoint, ...]
    selected: HyperParameters
    test: dict[str, list[float]]
    intervals: dict[str, tuple[float, float]]
    seed_intervals: dict[str, list[tuple[float, float]]]
    test_predictions: tuple[np.ndarray, ...]
    labels_left_out: dict[str, int]
    seconds: float

    def summary(self, metric: str) -> tuple[float, float]:
        """(mean, sample standard deviation) over seeds; the spread is 0 for one seed."""
        values = np.asarray(self.test[metric])
        spread = float(values.std(ddof=1)) if values.size > 1 else 0.0
        return float(values.mean()), spread


class _Trainer:
    """Fits probes of one preset on one dataset; holds the training tensors once."""

    def __init__(self, data: ProbeData, settings: ProbeSettings):
        self.data, self.settings = data, settings
        y_train = data.y["train"]
        if data.task == "regression":
            # Targets z-scored with train statistics; predictions are mapped back.
            self.y_mean = y_train.mean(axis=0)
            self.y_scale = np.where(y_train.std(axis=0) > 0, y_train.std(axis=0), 1.0)
            y_train = (y_train - self.y_mean) / self.y_scale
        self.x_train = tf.constant(data.x["train"])
        self.y_train = tf.constant(y_train)
        y_valid = data.y["valid"]
        if data.task == "regression":
            y_valid = (y_valid - self.y_mean) / self.y_scale
        self.validation = (tf.constant(data.x["valid"]), tf.constant(y_valid))
        if data.task in ("multiclass", "key"):
            self.n_outputs = len(data.target_names)
        else:
            self.n_outputs = int(data.y["train"].shape[1])

    def fit(self, hyper: HyperParameters, seed: int) -> tuple[keras.Model, FitSummary]:
        keras.utils.set_random_seed(seed)
        preset = self.settings.preset
        model = build_probe(input_dim=self.data.embedding_dim, n_outputs=self.n_outputs,
                            hidden_units=preset.hidden_units, dropout=preset.dropout,
                            l2=hyper.l2)
        summary = fit_probe(model, self.x_train, self.y_train, task=self.data.task,
                            hyper=hyper, batch_size=preset.batch_size,
                            warmup_steps=self.settings.effective_warmup_steps, seed=seed,
                            validation=self.validation)
        return model, summary

    def predict(self, model: keras.Model, split: str) -> np.ndarray:
        prediction = predict_probe(model, self.data.x[split], task=self.data.task)
        if self.data.task == "regression":
            prediction = prediction * self.y_scale + self.y_mean
        return prediction

    def score(self, split: str, prediction: np.ndarray) -> dict[str, float]:
        return score(self.data.task, self.data.y[split], prediction,
                     target_names=self.data.target_names,
                     allow_descending_fifths=self.settings.allow_descending_fifths)


@dataclasses.dataclass(frozen=True)
class BootstrapIntervals:
    """95 % percentile intervals: of the seed-averaged metric, and of each seed's."""

    mean: dict[str, tuple[float, float]]
    per_seed: dict[str, list[tuple[float, float]]]


def bootstrap_intervals(task: str, y_true: np.ndarray, predictions: tuple[np.ndarray, ...], *,
                        resamples: int, seed: int = 0, target_names: tuple[str, ...] = (),
                        allow_descending_fifths: bool = False) -> BootstrapIntervals:
    """Percentile intervals (95 %) over test-track resamples, the same resamples for the
    seed mean and for every seed."""
    if resamples <= 0:
        return BootstrapIntervals({}, {})
    rng = np.random.default_rng(seed)
    n = y_true.shape[0]
    draws: dict[str, list[list[float]]] = {}  # metric -> per resample, the per-seed values
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        try:
            per_seed = [score(task, y_true[rows], prediction[rows], target_names=target_names,
                              allow_descending_fifths=allow_descending_fifths)
                        for prediction in predictions]
        except MusicrepError:
            continue  # a resample with no scorable label (tiny test sets) is skipped
        for name in per_seed[0]:
            draws.setdefault(name, []).append([s[name] for s in per_seed])
    tail = (1 - CONFIDENCE) / 2 * 100

    def interval(values) -> tuple[float, float]:
        return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))

    values = {name: np.asarray(rows) for name, rows in draws.items()}
    return BootstrapIntervals(
        mean={name: interval(v.mean(axis=1)) for name, v in values.items()},
        per_seed={name: [interval(v[:, j]) for j in range(v.shape[1])] for name, v in values.items()})


def bootstrap_interval(task: str, y_true: np.ndarray, predictions: tuple[np.ndarray, ...], *,
                       resamples: int, seed: int = 0, target_names: tuple[str, ...] = (),
                       allow_descending_fifths: bool = False
                       ) -> dict[str, tuple[float, float]]:
    """Percentile interval (95 %) of the seed-averaged metrics over test-track resamples."""
    return bootstrap_intervals(task, y_true, predictions, resamples=resamples, seed=seed,
                               target_names=target_names,
                               allow_descending_fifths=allow_descending_fifths).mean


def paired_difference(task: str, y_true: np.ndarray, predictions: tuple[np.ndarray, ...],
                      reference: tuple[np.ndarray, ...], *, metric: str, resamples: int,
                      seed: int = 0, target_names: tuple[str, ...] = (),
                      allow_descending_fifths: bool = False) -> tuple[float, tuple[float, float] | None]:
    """Seed-mean `metric` of `predictions` minus that of `reference` on the same test
    tracks, and its 95 % percentile interval over test-track resamples drawn once for
    both (a paired bootstrap: it sees a difference that two overlapping intervals hide)."""
    def seed_mean(rows: np.ndarray, outputs: tuple[np.ndarray, ...]) -> float:
        return float(np.mean([score(task, y_true[rows], p[rows], target_names=target_names,
                                    allow_descending_fifths=allow_descending_fifths)[metric]
                              for p in outputs]))

    n = y_true.shape[0]
    everything = np.arange(n)
    difference = seed_mean(everything, predictions) - seed_mean(everything, reference)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        try:
            draws.append(seed_mean(rows, predictions) - seed_mean(rows, reference))
        except MusicrepError:
            continue  # a resample with no scorable label (tiny test sets) is skipped
    if not draws:
        return difference, None
    tail = (1 - CONFIDENCE) / 2 * 100
    return difference, (float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail)))


def _labels_left_out(data: ProbeData) -> dict[str, int]:
    if data.task != "multilabel":
        return {}
    return {split: int((~metrics.evaluable_labels(data.y[split])).sum())
            for split in ("valid", "test")}


def run_probe(data: ProbeData, settings: ProbeSettings) -> ProbeResult:
    """Tune on valid, score on test over seeds, bootstrap the test metrics."""
    if not settings.seeds:
        raise MusicrepError("run_probe needs at least one seed")
    started = time.perf_counter()
    trainer = _Trainer(data, settings)
    choose_by = selection_metric(data.task)
    grid, best, best_test = [], None, None
    first_seed = settings.seeds[0]
    points = settings.grid.points()
    for index, hyper in enumerate(points, start=1):
        model, summary = trainer.fit(hyper, first_seed)
        valid = trainer.score("valid", trainer.predict(model, "valid"))
        grid.append(GridPoint(hyper, valid, summary.seconds, summary.curve))
        logger.info("grid %d/%d %s: valid %s=%.4f (%.1f s)", index, len(points), hyper,
                    choose_by, valid[choose_by], summary.seconds)
        if best is None or valid[choose_by] > best.valid[choose_by]:
            best, best_test = grid[-1], trainer.predict(model, "test")
    predictions = [best_test]
    for seed in settings.seeds[1:]:
        model, _ = trainer.fit(best.hyper, seed)
        predictions.append(trainer.predict(model, "test"))
    per_seed = [trainer.score("test", prediction) for prediction in predictions]
    test = {name: [values[name] for values in per_seed] for name in per_seed[0]}
    intervals = bootstrap_intervals(
        data.task, data.y["test"], tuple(predictions), resamples=settings.bootstrap_resamples,
        target_names=data.target_names, allow_descending_fifths=settings.allow_descending_fifths)
    return ProbeResult(settings=settings, grid=tuple(grid), selected=best.hyper, test=test,
                       intervals=intervals.mean, seed_intervals=intervals.per_seed,
                       test_predictions=tuple(predictions),
                       labels_left_out=_labels_left_out(data),
                       seconds=time.perf_counter() - started)
