"""The pre-training loop of SPEC §3: supervised (BCE) or SimCLR (NT-Xent) SF-NFNet on shards.

One run = one output directory:

    DIR/config.json        the TrainConfig (musicrep.model.training_config; written
                           first; a resumed run must match it)
    DIR/labels.json        supervised only: the label vocabulary, in logit order
    DIR/checkpoints/       tf.train checkpoints (musicrep.model.checkpoints): backbone,
                           projector, optimizer (its step counter is the run's step), and
                           the input pipeline's iterator
                           (shuffle buffer and random state), so a resumed run continues
                           with exactly the batches, weights and learning rate it would have had
    DIR/metrics.jsonl      one JSON object per logged step: step (updates done), loss (mean
                           since the last line), lr (the rate of that step's update),
                           examples_per_s (batch rows, i.e. pairs for SimCLR), grad_norm,
                           eta_s and the input pipeline's running track counts
    DIR/tensorboard/       the same scalars for TensorBoard
    DIR/export/            at the end: the backbone (no projector) in the model export format,
                           with the front end of the shards it trained on
                           (musicrep.model.training_export)

Distribution: `tf.distribute.MirroredStrategy` over every visible GPU (the default
strategy on a CPU-only machine); with a multi-worker `TF_CONFIG` in the environment,
`MultiWorkerMirroredStrategy` (the paper used 16 GPUs on several hosts: start the same
command on every host with its own TF_CONFIG). `batch_size` is always the *global* batch;
each replica takes its share. Each worker runs its own input pipeline over all shards
with its own seed (sampling with replacement needs no sharding). The loss is averaged over
the global batch in exactly one place (`_replica_loss`, `tf.nn.compute_average_loss`), and
Keras' optimizer sums the replicas' gradients. On several workers only the chief writes the
directory; their iterators are not checkpointed (each would restore the chief's), so a
resumed multi-worker run restarts its input streams from a seed that includes the step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from musicrep import fileio
from musicrep.errors import ConfigError, MusicrepError
from musicrep.contracts.feature_config import FeatureConfig
from musicrep.model import checkpoints, losses
from musicrep.model import data as data_lib
from musicrep.model.projector import projector as build_projector
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, build_sf_nfnet
from musicrep.model.training_config import TrainConfig, TrainResult
from musicrep.model.export import ExportMetadata
from musicrep.model.training_export import export_backbone

logger = logging.getLogger(__name__)

# What TensorBoard's scalar plugin tags its summaries with (plugin "scalars", version-0 data).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars", content=b"")
)
METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(MusicrepError):
    """The training loss became NaN or infinite; the message names the step."""


# ---------------------------------------------------------------------------- distribution


def make_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirrored from a multi-worker TF_CONFIG, else Mirrored over the GPUs, else default."""
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    workers = tf_config.get("cluster", {}).get("worker", [])
    if len(workers) + len(tf_config.get("cluster", {}).get("chief", [])) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_logical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._num_workers > 1


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
    if not _is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


# ---------------------------------------------------------------------------- the run


class _Run:
    """Builds the models, optimizer, input and checkpoint of one run and trains them."""

    def __init__(
        self,
        config: TrainConfig,
        strategy: tf.distribute.Strategy,
        *,
        features: FeatureConfig,
        vocabulary: tuple[str, ...] | None = None,
    ) -> None:
        self.config = config
        self.features = features
        self.strategy = strategy
        self.chief = _is_chief(strategy)
        self.multi_worker = _is_multi_worker(strategy)
        self.labels = (
            data_lib.read_labels(config.labels, vocabulary=vocabulary) if config.objective == "supervised" else None
        )
        n_out = self.labels.n_labels if self.labels is not None else config.projection_size
        keras.utils.set_random_seed(config.seed)
        previous_policy = keras.mixed_precision.dtype_policy()
        if config.mixed_precision:
            keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        try:
            with strategy.scope():
                self.backbone = build_sf_nfnet(config.model_config)
                self.projector = build_projector(
                    n_out,
                    config.projector_widths,
                    input_dim=SF_NFNET_VARIANTS[config.model_config].embedding_size,
                )
                self.optimizer = config.optimizer()
                self.variables = self.backbone.trainable_variables + self.projector.trainable_variables
                self.optimizer.build(self.variables)
        finally:
            keras.mixed_precision.set_dtype_policy(previous_policy)
        if self.backbone.input_shape[1] != features.n_mels:
            raise ConfigError(
                f"the shards of {config.features!r} hold {features.n_mels} mel bands; "
                f"SF-NFNet {config.model_config} takes {self.backbone.input_shape[1]}"
            )
        self.schedule = config.learning_rate_schedule()

    # -- input
    def make_iterator(self, stream: int) -> Any:
        config = self.config

        def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            batch = context.get_per_replica_batch_size(config.global_batch_size)
            sampler = config.sampler_config(
                batch_size=batch, pipeline_id=context.input_pipeline_id, stream=stream, features=self.features
            )
            return data_lib.sample_snippets(config.features, sampler, labels=self.labels)

        if config.global_batch_size % self.strategy.num_replicas_in_sync:
            raise ConfigError(
                f"batch_size {config.global_batch_size} is not divisible by the "
                f"{self.strategy.num_replicas_in_sync} replicas"
            )
        return iter(self.strategy.distribute_datasets_from_function(input_fn))

    # -- one step
    def _replica_loss(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """Forward pass on one replica: (loss scaled for summing over replicas, per-example losses)."""
        config = self.config
        if config.objective == "simclr":
            views = tf.concat([batch["log_mel"], batch["log_mel_b"]], axis=0)
            z = self.backbone(views[..., tf.newaxis], training=True)
            h = tf.cast(self.projector(z, training=True), tf.float32)
            h_a, h_b = tf.split(h, 2, axis=0)
            per_example = losses.nt_xent_per_example(h_a, h_b, config.temperature)
        else:
            z = self.backbone(batch["log_mel"][..., tf.newaxis], training=True)
            logits = tf.cast(self.projector(z, training=True), tf.float32)
            per_example = losses.binary_cross_entropy_per_example(batch["labels"], logits)
        # The one place where the loss is scaled for the replicas: the sum over the global
        # batch divided by its size, so summing the replicas' gradients gives the gradient
        # of the global mean.
        loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.global_batch_size)
        return loss, per_example

    def _replica_step(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            loss, _ = self._replica_loss(batch)
        gradients = tape.gradient(loss, self.variables)
        return loss, gradients

    def build_train_step(self):
        compute = tf.function(self._replica_step, jit_compile=self.config.xla)
        strategy = self.strategy

        def replica_fn(batch):
            # Only the model's inputs enter the (possibly XLA-compiled) step: no strings.
            loss, gradients = compute({key: batch[key] for key in ("log_mel", "log_mel_b", "labels") if key in batch})
            # Exact on one replica; with R replicas, the mean of each replica's partial-gradient norm.
            grad_norm = tf.linalg.global_norm(gradients)
            self.optimizer.apply_gradients(zip(gradients, self.variables))
            counts = tf.stack([tf.reduce_max(batch[key]) for key in data_lib.COUNT_KEYS])
            return loss, grad_norm, counts

        @tf.function
        def train_step(iterator):
            loss, grad_norm, counts = strategy.run(replica_fn, args=(next(iterator),))
            return (
                strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.MEAN, grad_norm, axis=None),
                tf.reduce_max(tf.stack(strategy.experimental_local_results(counts)), axis=0),
            )

        return train_step

    # -- checkpoints and export
    def checkpoint(self, iterator: Any | None) -> tf.train.Checkpoint:
        return checkpoints.run_checkpoint(
            backbone=self.backbone, projector=self.projector, optimizer=self.optimizer, iterator=iterator
        )

    def export(self, export_dir: str, step: int) -> ExportMetadata:
        return export_backbone(self.backbone, export_dir, config=self.config, features=self.features, step=step)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool | None = None,
    stop_at_step: int | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> TrainResult:
    """Trains (or continues) the run in `config.output_dir`; see the module docstring.

    A directory that already holds this exact config and a checkpoint is always resumed
    (so a preempted job restarted with the same command continues); `resume=True` is what
    `--resume` passes and only documents the intent. `stop_at_step` ends the loop after that
    step *without* a final checkpoint or export, as an interruption would (for tests).
    `progress`: a progress bar (default: when stderr is a terminal).
    """
    started = time.perf_counter()
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or make_strategy()
    chief = _is_chief(strategy)
    features = data_lib.read_feature_config(config.features)  # the front end the export records
    checkpoints.prepare_directory(config, resume=resume, chief=chief)
    vocabulary = checkpoints.read_vocabulary(config.output_dir) if config.objective == "supervised" else None
    run = _Run(config, strategy, features=features, vocabulary=vocabulary)
    if chief and run.labels is not None:
        checkpoints.write_vocabulary(config.output_dir, run.labels.vocabulary)

    run_checkpoints = checkpoints.checkpoint_dir(config.output_dir)
    checkpoint_dir = run_checkpoints
    if not chief:  # other workers write (and throw away) their own copies
        checkpoint_dir = tempfile.mkdtemp(prefix=f"musicrep-worker{strategy.cluster_resolver.task_id}-")
    restored_step = checkpoints.latest_step(run_checkpoints) or 0
    keep_iterator = config.checkpoint_input and not run.multi_worker
    # Without a checkpointed iterator, a resumed run draws a fresh stream (seeded by the step).
    iterator = run.make_iterator(stream=0 if keep_iterator else restored_step)
    checkpoint = run.checkpoint(iterator if keep_iterator else None)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints)
    if restored_step:
        source = tf.train.latest_checkpoint(run_checkpoints)
        checkpoint.restore(source).assert_existing_objects_matched()
        logger.info("resumed %s from step %d", config.output_dir, restored_step)
    step = int(run.optimizer.iterations.numpy())
    if step != restored_step:
        raise MusicrepError(f"checkpoint says step {restored_step} but the optimizer is at {step}")

    train_step = run.build_train_step()
    writer = tf.summary.create_file_writer(fileio.join(config.output_dir, "tensorboard")) if chief else None
    metrics_path = fileio.join(config.output_dir, METRICS_FILE)
    # Lines logged after the restored checkpoint belong to the interrupted segment: drop them.
    metrics = [record for record in _read_metrics(metrics_path) if record["step"] <= step]
    show_progress = chief and (sys.stderr.isatty() if progress is None else progress)
    bar = keras.utils.Progbar(config.steps, stateful_metrics=["loss", "lr"]) if show_progress else None
    if bar is not None and step:
        bar.update(step)
    logger.info(
        "training %s %s: global batch %d on %d replica(s), steps %d → %d",
        config.objective, config.model_config, config.global_batch_size,
        strategy.num_replicas_in_sync, step, config.steps,
    )

    window_losses: list[float] = []
    window_start, window_step = time.perf_counter(), step
    loss_value = float("nan")
    end = config.steps if stop_at_step is None else min(stop_at_step, config.steps)
    while step < end:
        lr = float(run.schedule(step))  # the rate this update uses
        loss, grad_norm, counts = train_step(iterator)
        step += 1
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(f"loss is {loss_value} at step {step} (lr {lr:.3g}); last checkpoint kept")
        window_losses.append(loss_value)
        if bar is not None:
            bar.update(step, values=[("loss", loss_value), ("lr", lr)])
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - window_start
            examples_per_s = (step - window_step) * config.global_batch_size / max(elapsed, 1e-9)
            record = {
                "step": step,
                "loss": float(np.mean(window_losses)),
                "lr": lr,
                "examples_per_s": examples_per_s,
                "grad_norm": float(grad_norm),
                "eta_s": (config.steps - step) * config.global_batch_size / max(examples_per_s, 1e-9),
                # The input pipeline's running counts of records read / too short / unlabelled.
                **{key: int(value) for key, value in zip(data_lib.COUNT_KEYS, counts.numpy())},
            }
            if chief:
                metrics.append(record)
                _write_metrics(metrics, metrics_path, writer)
            window_losses, window_start, window_step = [], time.perf_counter(), step
        if step % config.checkpoint_every == 0 and step < config.steps:
            manager.save(checkpoint_number=step)
    if stop_at_step is not None and step < config.steps:
        return TrainResult(step, loss_value, config.output_dir, None, restored_step,
                           seconds=time.perf_counter() - started)
    if checkpoints.latest_step(checkpoint_dir) != step:
        manager.save(checkpoint_number=step)
    export_dir, model_id = None, None
    if chief:
        export_dir = fileio.join(config.output_dir, "export")
        model_id = run.export(export_dir, step).model_id
        writer.flush()
    return TrainResult(step, loss_value, config.output_dir, export_dir, restored_step,
                       model_id=model_id, seconds=time.perf_counter() - started)


def _read_metrics(path: str) -> list[dict[str, Any]]:
    if not fileio.exists(path):
        return []
    return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]


def _write_metrics(metrics: list[dict[str, Any]], path: str, writer: Any) -> None:
    # Rewritten whole (object stores have no append); a run logs a few thousand lines.
    fileio.write_text(path, "".join(json.dumps(record) + "\n" for record in metrics))
    record = metrics[-1]
    with writer.as_default(step=record["step"]):
        for key, value in record.items():
            if key != "step":
                # tf.summary.scalar needs the tensorboard package; this writes the same event.
                tf.summary.write(key, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
    logger.info(
        "step %d loss %.4f lr %.3g %.1f examples/s", record["step"], record["loss"], record["lr"], record["examples_per_s"]
    )
