"""The probe network and its training loop (Keras 3 on TensorFlow).

`build_probe` makes the MLP of a preset; `fit_probe` trains it for an exact number of
steps with Adam (`adam.FusedAdam`, Keras's update in one fused kernel) and a warm-up +
cosine schedule. Training runs many steps inside one
compiled `tf.function` (batches gathered from in-memory tensors), so the cost per step
is the matrix work, not Python.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import keras
import numpy as np
import tensorflow as tf

from musicrep.errors import ConfigError, MusicrepError
from musicrep.model.schedules import ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON, warmup_cosine
from musicrep.probes.adam import FusedAdam
from musicrep.probes.presets import HyperParameters

logger = logging.getLogger(__name__)

# Steps per compiled call: long enough that Python is idle, short enough for progress logs.
STEPS_PER_CALL = 500
# Points of the learning curve: a short run is cut into this many calls so that its
# curve has a shape (a long one keeps STEPS_PER_CALL and gets more points).
CURVE_POINTS = 20
PREDICT_BATCH = 8192
PROGRESS_SECONDS = 30.0


def build_probe(*, input_dim: int, n_outputs: int, hidden_units: tuple[int, ...],
                dropout: float, l2: float, name: str = "probe") -> keras.Model:
    """An MLP: Dense → ReLU → Dropout per hidden layer, then a linear output (logits).

    L2 applies to every Dense kernel, not to biases. A linear probe (no hidden layer) with
    dropout drops its input instead, so Table 2's dropout still means something there.
    """
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1); got {dropout!r}")
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=(input_dim,), name=f"{name}_input")
    x = inputs
    if not hidden_units and dropout > 0:
        x = keras.layers.Dropout(dropout, name=f"{name}_input_dropout")(x)
    for index, units in enumerate(hidden_units, start=1):
        x = keras.layers.Dense(units, kernel_regularizer=regularizer,
                               name=f"{name}_hidden{index}")(x)
        x = keras.layers.ReLU(name=f"{name}_hidden{index}_relu")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{name}_hidden{index}_dropout")(x)
    outputs = keras.layers.Dense(n_outputs, kernel_regularizer=regularizer,
                                 name=f"{name}_output")(x)
    return keras.Model(inputs, outputs, name=name)


def learning_rate_schedule(*, learning_rate: float, steps: int,
                           warmup_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up from 0 to `learning_rate` over `warmup_steps`, then cosine to 0."""
    try:
        return warmup_cosine(peak_lr=learning_rate, warmup_steps=warmup_steps, total_steps=steps)
    except ConfigError as error:
        raise ConfigError(f"{error} (lower --warmup-steps or raise steps in --grid)") from None


def _loss(task: str) -> keras.losses.Loss:
    if task == "multilabel":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    if task in ("multiclass", "key"):
        # Categorical cross-entropy with integer targets.
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if task == "regression":
        return keras.losses.MeanSquaredError()
    raise ConfigError(f"unknown probe task {task!r}")


class _BatchStream:
    """Batch indices: each epoch a fresh permutation of the training tracks, batches running
    across epoch boundaries so that every step has a full batch."""

    def __init__(self, n_tracks: int, batch_size: int, seed: int):
        self._n, self._batch = n_tracks, batch_size
        self._rng = np.random.default_rng(seed)
        self._pending = np.zeros(0, np.int32)

    def take(self, steps: int) -> np.ndarray:
        need = steps * self._batch
        parts = [self._pending]
        have = self._pending.size
        while have < need:
            parts.append(self._rng.permutation(self._n).astype(np.int32))
            have += self._n
        stream = np.concatenate(parts)
        self._pending = stream[need:]
        return stream[:need].reshape(steps, self._batch)


@dataclasses.dataclass(frozen=True)
class FitSummary:
    """What one training run did."""

    steps: int
    batch_size: int
    seconds: float
    final_loss: float
    curve: tuple[tuple[int, float, float | None], ...] = ()
    """(step, mean training loss since the previous point, validation loss or None)."""


def fit_probe(model: keras.Model, x: tf.Tensor, y: tf.Tensor, *, task: str,
              hyper: HyperParameters, batch_size: int, warmup_steps: int,
              seed: int, validation: tuple[tf.Tensor, tf.Tensor] | None = None) -> FitSummary:
    """Train `model` in place for exactly `hyper.steps` steps.

    Args:
        x: (n, d) float32 training embeddings (a tensor, so that grid points share it).
        y: training targets as `musicrep.probes.data.ProbeData.y` (regression z-scored).
        batch_size: capped at n, so a small dataset trains full-batch.
        seed: drives the batch order; the caller seeds Keras (initialisation, dropout).
        validation: (x, y) whose loss (without the L2 term) is recorded at every point
            of the learning curve.
    """
    n_tracks = int(x.shape[0])
    batch_size = min(batch_size, n_tracks)
    schedule = learning_rate_schedule(learning_rate=hyper.learning_rate, steps=hyper.steps,
                                      warmup_steps=warmup_steps)
    variables = model.trainable_variables
    optimizer = FusedAdam(variables, schedule=schedule, beta_1=ADAM_BETA_1,
                          beta_2=ADAM_BETA_2, epsilon=ADAM_EPSILON)
    loss_fn = _loss(task)

    @tf.function(input_signature=[tf.TensorSpec([None, batch_size], tf.int32)])
    def train_steps(indices: tf.Tensor) -> tf.Tensor:
        total = tf.constant(0.0)
        for step in tf.range(tf.shape(indices)[0]):
            batch = indices[step]
            with tf.GradientTape() as tape:
                loss = loss_fn(tf.gather(y, batch), model(tf.gather(x, batch), training=True))
                objective = loss + tf.add_n(model.losses) if model.losses else loss
            optimizer.apply(tape.gradient(objective, variables))
            total += loss
        return total / tf.cast(tf.shape(indices)[0], tf.float32)

    stream = _BatchStream(n_tracks, batch_size, seed)
    started = last_log = time.perf_counter()
    done, mean_loss, curve = 0, math.nan, []
    per_call = min(STEPS_PER_CALL, max(1, math.ceil(hyper.steps / CURVE_POINTS)))
    while done < hyper.steps:
        chunk = min(per_call, hyper.steps - done)
        mean_loss = float(train_steps(tf.constant(stream.take(chunk))))
        done += chunk
        if not math.isfinite(mean_loss):
            raise MusicrepError(f"non-finite training loss by step {done} ({hyper})")
        valid_loss = None
        if validation is not None:
            valid_loss = float(loss_fn(validation[1], model(validation[0], training=False)))
        curve.append((done, mean_loss, valid_loss))
        now = time.perf_counter()
        if now - last_log >= PROGRESS_SECONDS or done == hyper.steps:
            last_log, rate = now, done / (now - started)
            logger.info("step %d/%d loss %.4f lr %.2e %.0f examples/s ETA %.0f s", done,
                        hyper.steps, mean_loss, float(schedule(done)), rate * batch_size,
                        (hyper.steps - done) / rate)
    return FitSummary(hyper.steps, batch_size, time.perf_counter() - started, mean_loss, tuple(curve))


def predict_probe(model: keras.Model, x: np.ndarray | tf.Tensor, *, task: str) -> np.ndarray:
    """Outputs for `x`: tag probabilities (multilabel), class probabilities (multiclass,
    key) or the regression values in the space the model was trained in."""
    parts = [model(x[start:start + PREDICT_BATCH], training=False)
             for start in range(0, int(x.shape[0]), PREDICT_BATCH)]
    logits = tf.concat(parts, axis=0)
    if task == "multilabel":
        logits = tf.sigmoid(logits)
    elif task in ("multiclass", "key"):
        logits = tf.nn.softmax(logits, axis=-1)
    return np.asarray(logits, dtype=np.float32)
