"""The pre-training loop of SPEC §3: supervised (BCE) or SimCLR (NT-Xent) SF-NFNet on shards.

One run = one output directory:

    DIR/config.json        the TrainConfig (written first; a resumed run must match it)
    DIR/labels.json        supervised only: the label vocabulary, in logit order
    DIR/checkpoints/       tf.train checkpoints: backbone, projector, optimizer (its step
                           counter is the run's step), and the input pipeline's iterator
                           (shuffle buffer and random state), so a resumed run continues
                           with exactly the batches, weights and learning rate it would have had
    DIR/metrics.jsonl      one JSON object per logged step: step (updates done), loss (mean
                           since the last line), lr (the rate of that step's update),
                           examples_per_s (batch rows, i.e. pairs for SimCLR), grad_norm,
                           eta_s and the input pipeline's running track counts
    DIR/tensorboard/       the same scalars for TensorBoard
    DIR/export/            at the end: the backbone (no projector) in the model export format

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

import dataclasses
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

from musicrep.errors import ConfigError, MusicrepError
from musicrep.model import data as data_lib
from musicrep.model import losses, schedules
from musicrep.model.export import save as save_export
from musicrep.model.projector import projector as build_projector
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, build_sf_nfnet

logger = logging.getLogger(__name__)

OBJECTIVES = ("simclr", "supervised")
# SPEC §3: supervised N = 512; SimCLR N = 1920 pairs (ULarge; USmall used 256).
DEFAULT_BATCH_SIZE = {"supervised": 512, "simclr": 1920}
# Projector per backbone variant: (hidden widths, SimCLR output n). F0 is SPEC §2's head;
# the tiny demo/test backbone (224-d embedding) gets a head in proportion, so the head does
# not dwarf the network it trains.
PROJECTORS = {"F0": ((4096, 4096, 4096), 1024), "tiny": ((256, 256, 256), 128)}
CONFIG_FILE = "config.json"
# What TensorBoard's scalar plugin tags its summaries with (plugin "scalars", version-0 data).
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars", content=b"")
)
METRICS_FILE = "metrics.jsonl"


class NonFiniteLossError(MusicrepError):
    """The training loss became NaN or infinite; the message names the step."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one pre-training run (written to DIR/config.json).

    Attributes:
      objective: "simclr" (NT-Xent on pairs of snippets) or "supervised" (BCE on labels).
      features: glob of the log-mel shards (local or gs://).
      output_dir: the run directory (see the module docstring).
      labels: CSV/Parquet with track_id and tags; required for supervised.
      model_config: SF-NFNet variant, "F0" (the paper's) or "tiny" (tests, demos).
      batch_size: global batch (pairs for SimCLR); None = the paper's (512 / 1920).
      steps: optimizer updates in all (200k in the paper).
      warmup_steps: linear warm-up from 0 to peak_lr (5k); then cosine to 0 at `steps`.
      peak_lr: the learning rate at the end of the warm-up (2e-4).
      adam_beta_1, adam_beta_2, adam_epsilon: Adam's constants (0.9, 0.999, 1e-7).
      temperature: NT-Xent τ (0.1).
      projection_dim: SimCLR projector output n; None = PROJECTORS (1024 for F0);
        supervised always uses K = the number of labels.
      projector_hidden: widths of the projector's hidden ReLU layers; None = PROJECTORS
        (3 × 4096 for F0).
      mixup: apply mixup (SPEC §3; see musicrep.model.mixup) to the batches.
      mixup_alpha, mixup_beta: Beta distribution of the mixup gains (5, 2).
      positive_max_distance_s: SimCLR pairs' centres are strictly closer than this
        (5 s); None = "clip" mode (any two snippets of the same clip).
      snippet_frames: frames per snippet (300 = 3 s at 100 frames/s).
      shuffle_buffer: snippets in the input shuffle buffer (None: max(2·per-pipeline batch, 256)).
      draws_per_track: expected draws of each track per pass over the shards (Poisson(λ));
        1 is sampling with replacement as the paper; more feeds a fast GPU from long tracks.
      cycle_length: shards read in parallel by each input pipeline.
      seed: seeds the weights, stochastic depth and the input stream.
      checkpoint_every: steps between checkpoints (one is also written at the end).
      keep_checkpoints: how many recent checkpoints to keep.
      log_every: steps between lines of metrics.jsonl / TensorBoard points.
      xla: compile each replica's forward + backward pass with XLA.
      mixed_precision: bfloat16 compute with float32 weights (Keras "mixed_bfloat16");
        the embedding, projector output and losses stay float32.
      deterministic: enable TensorFlow's deterministic ops (bitwise reproducible runs;
        slower on GPU, and some GPU ops refuse).
      checkpoint_input: save the input iterator (shuffle buffer included) in checkpoints
        so a resume is exact; off saves space at the cost of a fresh input stream.
    """

    objective: str
    features: str
    output_dir: str
    labels: str | None = None
    model_config: str = "F0"
    batch_size: int | None = None
    steps: int = schedules.TOTAL_STEPS
    warmup_steps: int = schedules.WARMUP_STEPS
    peak_lr: float = schedules.PEAK_LR
    adam_beta_1: float = 0.9
    adam_beta_2: float = 0.999
    adam_epsilon: float = 1e-7
    temperature: float = losses.DEFAULT_TEMPERATURE
    projection_dim: int | None = None
    projector_hidden: tuple[int, ...] | None = None
    mixup: bool = True
    mixup_alpha: float = data_lib.MIXUP_ALPHA
    mixup_beta: float = data_lib.MIXUP_BETA
    positive_max_distance_s: float | None = data_lib.POSITIVE_MAX_DISTANCE_S
    snippet_frames: int = data_lib.SNIPPET_FRAMES
    shuffle_buffer: int | None = None
    draws_per_track: float = 1.0
    cycle_length: int = 8
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    xla: bool = False
    mixed_precision: bool = False
    deterministic: bool = False
    checkpoint_input: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "supervised" and not self.labels:
            raise ConfigError("supervised pre-training needs labels (--labels CSV/Parquet)")
        if self.model_config not in SF_NFNET_VARIANTS:
            raise ConfigError(f"model_config must be one of {sorted(SF_NFNET_VARIANTS)}, got {self.model_config!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        schedules.warmup_cosine(peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, total_steps=self.steps)
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ConfigError(f"projection_dim must be ≥ 1, got {self.projection_dim}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.positive_max_distance_s is not None:
            data_lib.max_start_offset(self.positive_max_distance_s)
        if self.projector_hidden is not None:
            object.__setattr__(self, "projector_hidden", tuple(int(w) for w in self.projector_hidden))

    # Derived values, computed here only.
    @property
    def global_batch_size(self) -> int:
        return self.batch_size if self.batch_size is not None else DEFAULT_BATCH_SIZE[self.objective]

    @property
    def projector_widths(self) -> tuple[int, ...]:
        return self.projector_hidden if self.projector_hidden is not None else PROJECTORS[self.model_config][0]

    @property
    def projection_size(self) -> int:
        """SimCLR projector output n (the supervised head has one logit per label instead)."""
        return self.projection_dim if self.projection_dim is not None else PROJECTORS[self.model_config][1]

    @property
    def decay_steps(self) -> int:
        return self.steps - self.warmup_steps

    @property
    def views(self) -> int:
        """Snippets per example: 2 for SimCLR pairs, 1 for supervised."""
        return 2 if self.objective == "simclr" else 1

    def learning_rate_schedule(self) -> keras.optimizers.schedules.LearningRateSchedule:
        return schedules.warmup_cosine(peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, total_steps=self.steps)

    def sampler_config(self, *, batch_size: int, pipeline_id: int = 0, stream: int = 0) -> data_lib.SamplerConfig:
        return data_lib.SamplerConfig(
            batch_size=batch_size,
            pairs=self.objective == "simclr",
            positive_max_distance_s=self.positive_max_distance_s,
            snippet_frames=self.snippet_frames,
            shuffle_buffer=self.shuffle_buffer,
            draws_per_track=self.draws_per_track,
            cycle_length=self.cycle_length,
            seed=self.seed + 7_777_777 * stream,
            pipeline_id=pipeline_id,
            mixup=self.mixup,
            mixup_alpha=self.mixup_alpha,
            mixup_beta=self.mixup_beta,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        fields = json.loads(text)
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig fields {unknown}")
        return cls(**fields)

    @classmethod
    def load(cls, output_dir: str) -> TrainConfig:
        path = os.path.join(output_dir, CONFIG_FILE)
        if not tf.io.gfile.exists(path):
            raise ConfigError(f"{output_dir} has no {CONFIG_FILE}: nothing to resume")
        with tf.io.gfile.GFile(path) as handle:
            return cls.from_json(handle.read())


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run leaves: its step, last logged loss and where things are."""

    step: int
    loss: float
    output_dir: str
    export_dir: str | None
    resumed_from: int


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
        self, config: TrainConfig, strategy: tf.distribute.Strategy, *, vocabulary: tuple[str, ...] | None = None
    ) -> None:
        self.config = config
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
                self.optimizer = keras.optimizers.Adam(
                    learning_rate=config.learning_rate_schedule(),
                    beta_1=config.adam_beta_1,
                    beta_2=config.adam_beta_2,
                    epsilon=config.adam_epsilon,
                )
                self.variables = self.backbone.trainable_variables + self.projector.trainable_variables
                self.optimizer.build(self.variables)
        finally:
            keras.mixed_precision.set_dtype_policy(previous_policy)
        self.schedule = config.learning_rate_schedule()

    # -- input
    def make_iterator(self, stream: int) -> Any:
        config = self.config

        def input_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            batch = context.get_per_replica_batch_size(config.global_batch_size)
            sampler = config.sampler_config(batch_size=batch, pipeline_id=context.input_pipeline_id, stream=stream)
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

    # -- checkpoints
    def checkpoint(self, iterator: Any | None) -> tf.train.Checkpoint:
        # Stochastic depth's seed-generator states are variables outside `weights`, and a
        # Keras model does not expose them to tf.train: save them by position.
        seeds = [
            v for v in self.backbone.variables + self.projector.variables if v.path.endswith("seed_generator_state")
        ]
        items = {
            "backbone": self.backbone,
            "projector": self.projector,
            "optimizer": self.optimizer,
            "rng": tf.train.Checkpoint(**{f"state{i}": v for i, v in enumerate(seeds)}),
        }
        if iterator is not None:
            items["data"] = iterator
        return tf.train.Checkpoint(**items)

    def export(self, export_dir: str, step: int) -> None:
        # A float32 copy of the backbone (the export is policy-free), weights copied by order.
        model = build_sf_nfnet(self.config.model_config)
        model.set_weights(self.backbone.get_weights())
        save_export(
            model,
            export_dir,
            config=SF_NFNET_VARIANTS[self.config.model_config],
            source=f"musicrep pretrain {self.config.objective} step {step} ({self.config.output_dir})",
        )


def _latest_step(checkpoint_dir: str) -> int | None:
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    return None if latest is None else int(latest.rsplit("-", 1)[-1])


def _prepare_directory(config: TrainConfig, *, resume: bool, chief: bool) -> None:
    config_path = os.path.join(config.output_dir, CONFIG_FILE)
    checkpoints = os.path.join(config.output_dir, "checkpoints")
    has_checkpoint = _latest_step(checkpoints) is not None
    if tf.io.gfile.exists(config_path):
        stored = TrainConfig.load(config.output_dir)
        if stored != config:
            changed = {
                f.name: (getattr(stored, f.name), getattr(config, f.name))
                for f in dataclasses.fields(config)
                if getattr(stored, f.name) != getattr(config, f.name)
            }
            raise ConfigError(
                f"{config.output_dir} holds a run with another config (stored, given): {changed}; "
                "use --resume to continue it as configured, or a new --output"
            )
    elif resume or has_checkpoint:
        raise ConfigError(f"{config.output_dir} has checkpoints but no {CONFIG_FILE}; cannot resume")
    if chief:
        tf.io.gfile.makedirs(config.output_dir)
        with tf.io.gfile.GFile(config_path, "w") as handle:
            handle.write(config.to_json())


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
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or make_strategy()
    chief = _is_chief(strategy)
    _prepare_directory(config, resume=resume, chief=chief)
    labels_path = os.path.join(config.output_dir, "labels.json")
    vocabulary = None
    if config.objective == "supervised" and tf.io.gfile.exists(labels_path):
        with tf.io.gfile.GFile(labels_path) as handle:  # a resumed run keeps its logit order
            vocabulary = tuple(json.load(handle)["vocabulary"])
    run = _Run(config, strategy, vocabulary=vocabulary)
    if chief and run.labels is not None:
        with tf.io.gfile.GFile(labels_path, "w") as handle:
            handle.write(json.dumps({"vocabulary": list(run.labels.vocabulary)}, indent=2))

    checkpoint_dir = os.path.join(config.output_dir, "checkpoints")
    if not chief:  # other workers write (and throw away) their own copies
        checkpoint_dir = tempfile.mkdtemp(prefix=f"musicrep-worker{strategy.cluster_resolver.task_id}-")
    restored_step = _latest_step(os.path.join(config.output_dir, "checkpoints")) or 0
    keep_iterator = config.checkpoint_input and not run.multi_worker
    # Without a checkpointed iterator, a resumed run draws a fresh stream (seeded by the step).
    iterator = run.make_iterator(stream=0 if keep_iterator else restored_step)
    checkpoint = run.checkpoint(iterator if keep_iterator else None)
    manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints)
    if restored_step:
        source = tf.train.latest_checkpoint(os.path.join(config.output_dir, "checkpoints"))
        checkpoint.restore(source).assert_existing_objects_matched()
        logger.info("resumed %s from step %d", config.output_dir, restored_step)
    step = int(run.optimizer.iterations.numpy())
    if step != restored_step:
        raise MusicrepError(f"checkpoint says step {restored_step} but the optimizer is at {step}")

    train_step = run.build_train_step()
    writer = tf.summary.create_file_writer(os.path.join(config.output_dir, "tensorboard")) if chief else None
    metrics_path = os.path.join(config.output_dir, METRICS_FILE)
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
        return TrainResult(step, loss_value, config.output_dir, None, restored_step)
    if _latest_step(checkpoint_dir) != step:
        manager.save(checkpoint_number=step)
    export_dir = os.path.join(config.output_dir, "export")
    if chief:
        run.export(export_dir, step)
        writer.flush()
    return TrainResult(step, loss_value, config.output_dir, export_dir if chief else None, restored_step)


def _read_metrics(path: str) -> list[dict[str, Any]]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_metrics(metrics: list[dict[str, Any]], path: str, writer: Any) -> None:
    # Rewritten whole (object stores have no append); a run logs a few thousand lines.
    with tf.io.gfile.GFile(path, "w") as handle:
        handle.write("".join(json.dumps(record) + "\n" for record in metrics))
    record = metrics[-1]
    with writer.as_default(step=record["step"]):
        for key, value in record.items():
            if key != "step":
                # tf.summary.scalar needs the tensorboard package; this writes the same event.
                tf.summary.write(key, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
    logger.info(
        "step %d loss %.4f lr %.3g %.1f examples/s", record["step"], record["loss"], record["lr"], record["examples_per_s"]
    )
