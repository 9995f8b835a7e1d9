"""The settings of one pre-training run (SPEC §3), written to DIR/config.json.

Derived values (global batch, projector widths, the learning-rate schedule, the sampler's
settings) are computed here only.
"""
from __future__ import annotations

import dataclasses
import json

import keras

from musicrep import fileio
from musicrep.errors import ConfigError
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.model import data as data_lib
from musicrep.model import losses, schedules
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS

OBJECTIVES = ("simclr", "supervised")
# SPEC §3: supervised N = 512; SimCLR N = 1920 pairs (ULarge; USmall used 256).
DEFAULT_BATCH_SIZE = {"supervised": 512, "simclr": 1920}
# Projector per backbone variant: (hidden widths, SimCLR output n). F0 is SPEC §2's head;
# the tiny demo/test backbone (224-d embedding) gets a head in proportion, so the head does
# not dwarf the network it trains.
PROJECTORS = {"F0": ((4096, 4096, 4096), 1024), "tiny": ((256, 256, 256), 128)}
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one pre-training run (written to DIR/config.json).

    Attributes:
      objective: "simclr" (NT-Xent on pairs of snippets) or "supervised" (BCE on labels).
      features: the log-mel shards: the features job's output directory or a glob (local or gs://).
      output_dir: the run directory (see musicrep.model.training).
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
      snippet_frames: frames per snippet (300 = 3 s at the reference's 100 frames/s).
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
    adam_beta_1: float = schedules.ADAM_BETA_1
    adam_beta_2: float = schedules.ADAM_BETA_2
    adam_epsilon: float = schedules.ADAM_EPSILON
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
        self.learning_rate_schedule()
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ConfigError(f"projection_dim must be ≥ 1, got {self.projection_dim}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        self.sampler_config(batch_size=1)  # the sampler's own checks, before any work
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

    def optimizer(self) -> keras.optimizers.Adam:
        return keras.optimizers.Adam(
            learning_rate=self.learning_rate_schedule(),
            beta_1=self.adam_beta_1,
            beta_2=self.adam_beta_2,
            epsilon=self.adam_epsilon,
        )

    def sampler_config(
        self,
        *,
        batch_size: int,
        pipeline_id: int = 0,
        stream: int = 0,
        features: FeatureConfig = DEFAULT_FEATURE_CONFIG,
    ) -> data_lib.SamplerConfig:
        """The input pipeline's settings; `features` is the shards' front end."""
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
            features=features,
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
        path = fileio.join(output_dir, CONFIG_FILE)
        if not fileio.exists(path):
            raise ConfigError(f"{output_dir} has no {CONFIG_FILE}: nothing to resume")
        return cls.from_json(fileio.read_text(path))


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run leaves: its step, last logged loss and where things are."""

    step: int
    loss: float
    output_dir: str
    export_dir: str | None
    resumed_from: int
