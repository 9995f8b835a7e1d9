"""The settings of one pre-training run (SPEC §3), written to DIR/config.json.

Derived values (global batch, projector widths, the learning-rate schedule, the sampler's
settings) are computed here only.
"""
from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from musicrep import dataconfig, fileio
from musicrep.dataconfig import nested, setting
from musicrep.errors import ConfigError
from musicrep.model import schedules
from musicrep.model.sampling import SamplingConfig

if TYPE_CHECKING:  # TensorFlow is loaded only when a run builds its input or optimizer
    import keras

    from musicrep.contracts.feature_config import FeatureConfig
    from musicrep.model.data import SamplerConfig

OBJECTIVES = ("simclr", "supervised")
# SPEC §3: supervised N = 512; SimCLR N = 1920 pairs (ULarge; USmall used 256).
DEFAULT_BATCH_SIZE = {"supervised": 512, "simclr": 1920}
DEFAULT_TEMPERATURE = 0.1  # SPEC §3: NT-Xent τ
# Projector per backbone variant: (hidden widths, SimCLR output n). F0 is SPEC §2's head;
# the tiny demo/test backbone (224-d embedding) gets a head in proportion, so the head does
# not dwarf the network it trains.
PROJECTORS = {"F0": ((4096, 4096, 4096), 1024), "tiny": ((256, 256, 256), 128)}
CONFIG_FILE = "config.json"
# The stream seed of input stream k (a resumed multi-worker run starts a new stream).
_STREAM_SEED_STEP = 7_777_777


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(width) for width in text.split(",") if width.strip())


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one pre-training run (written to DIR/config.json, flat).

    Each field's help is the documentation (docs/configuration.md is generated from it);
    `musicrep pretrain` options, config.json keys and the code read these fields only.
    """

    objective: str = setting(positional=True, choices=OBJECTIVES,
                             help="simclr (NT-Xent on pairs of snippets) or supervised (BCE on labels)")
    features: str = setting(required_on_cli=False,
                            help="the log-mel shards: the features job's output directory or a glob "
                            "(local or gs://); required unless --resume")
    output_dir: str = setting(flag="--output", help="the run directory (checkpoints, metrics, export)")
    labels: str | None = setting(None, help="CSV/Parquet with track_id and tags ('|'-separated or a list); "
                                 "required for supervised")
    model_config: str = setting("F0", flag="--config", help="SF-NFNet variant: F0 (the paper's) or tiny (tests, demos)")
    batch_size: int | None = setting(None, minimum=1,
                                     help="global batch (pairs for SimCLR); default the paper's 512 / 1920")
    steps: int = setting(schedules.TOTAL_STEPS, minimum=1, help="optimizer updates in all")
    warmup_steps: int = setting(schedules.WARMUP_STEPS, minimum=0,
                                help="linear LR warm-up from 0 to the peak; then cosine to 0 at steps")
    peak_lr: float = setting(schedules.PEAK_LR, above=0, help="the learning rate at the end of the warm-up")
    adam_beta_1: float = setting(schedules.ADAM_BETA_1, minimum=0, maximum=1, help="Adam's β1")
    adam_beta_2: float = setting(schedules.ADAM_BETA_2, minimum=0, maximum=1, help="Adam's β2")
    adam_epsilon: float = setting(schedules.ADAM_EPSILON, above=0, help="Adam's ε")
    temperature: float = setting(DEFAULT_TEMPERATURE, above=0, help="NT-Xent temperature τ")
    projection_dim: int | None = setting(
        None, minimum=1, help="SimCLR projector output n; default 1024 for F0, 128 for tiny "
        "(supervised always has one logit per label)")
    projector_hidden: tuple[int, ...] | None = setting(
        None, minimum=1, parse=_widths, metavar="W,W,...",
        help="widths of the projector's hidden ReLU layers; default 4096,4096,4096 for F0, 256,256,256 for tiny")
    sampling: SamplingConfig = nested(SamplingConfig, default_factory=lambda: SamplingConfig(mixup=True))
    seed: int = setting(0, help="seeds the weights, stochastic depth and the input stream")
    checkpoint_every: int = setting(1000, minimum=1, help="steps between checkpoints (one is also written at the end)")
    keep_checkpoints: int = setting(3, minimum=1, help="how many recent checkpoints to keep")
    log_every: int = setting(100, minimum=1, help="steps between lines of metrics.jsonl / TensorBoard points")
    xla: bool = setting(False, help="compile each replica's forward + backward pass with XLA")
    mixed_precision: bool = setting(
        False, flag="--bf16", help="bfloat16 compute with float32 weights (Keras mixed_bfloat16); "
        "the embedding, projector output and losses stay float32")
    deterministic: bool = setting(False, help="TensorFlow's deterministic ops (bitwise reproducible; slower on GPU)")
    checkpoint_input: bool = setting(
        True, help="save the input iterator (shuffle buffer included) in checkpoints so a resume is exact")

    def __post_init__(self) -> None:
        dataconfig.check(self)
        if self.objective == "supervised" and not self.labels:
            raise ConfigError("supervised pre-training needs labels (--labels CSV/Parquet)")
        from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS  # Keras: the variants are built with it

        if self.model_config not in SF_NFNET_VARIANTS:
            raise ConfigError(f"model_config must be one of {sorted(SF_NFNET_VARIANTS)}, got {self.model_config!r}")
        schedules.check_schedule(peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, total_steps=self.steps)

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
        import keras

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
        features: FeatureConfig | None = None,
    ) -> SamplerConfig:
        """The input pipeline's settings; `features` is the shards' front end (default: the reference's)."""
        from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
        from musicrep.model.data import SamplerConfig

        return SamplerConfig(
            batch_size=batch_size,
            pairs=self.objective == "simclr",
            sampling=self.sampling,
            seed=self.seed + _STREAM_SEED_STEP * stream,
            pipeline_id=pipeline_id,
            features=features or DEFAULT_FEATURE_CONFIG,
        )

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any], *, where: str = "TrainConfig") -> TrainConfig:
        """From flat settings (config.json's keys, the sampler's among them)."""
        return dataconfig.from_mapping(cls, mapping, where=where)

    def to_mapping(self) -> dict[str, Any]:
        return dataconfig.to_mapping(self)

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_mapping(json.loads(text), where=CONFIG_FILE)

    @classmethod
    def load(cls, output_dir: str) -> TrainConfig:
        path = fileio.join(output_dir, CONFIG_FILE)
        if not fileio.exists(path):
            raise ConfigError(f"{output_dir} has no {CONFIG_FILE}: nothing to resume")
        return cls.from_json(fileio.read_text(path))


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run leaves: what `musicrep pretrain` returns.

    Attributes:
      step: updates done (the run's `steps` unless it was stopped early).
      loss: the loss of the last update (nan when no update ran in this call).
      output_dir: the run directory.
      export_dir: the backbone's model export; None when stopped early or not the chief.
      resumed_from: the checkpoint step this call started from (0 for a fresh run).
      model_id: the export's model id (None without an export).
      seconds: wall time of this call.
    """

    step: int
    loss: float
    output_dir: str
    export_dir: str | None
    resumed_from: int
    model_id: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the command line."""
        where = f"export {self.export_dir} (model {self.model_id})" if self.export_dir else f"run {self.output_dir}, no export"
        return (f"pretrain: step {self.step} (from {self.resumed_from}), final loss {self.loss:.4f}, "
                f"{where}, {self.seconds:.1f} s")
