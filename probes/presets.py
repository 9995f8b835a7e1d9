"""Probe presets: the spec's Table 2 (SPEC.md §5) as one table, plus the shared protocol.

A preset fixes the probe network (hidden layers, dropout), the batch size and the task of
one downstream dataset. Learning rate, number of steps and L2 are not fixed: they are
tuned on the validation split over a grid (`DEFAULT_GRID` unless the caller gives one).
"""
from __future__ import annotations

import dataclasses
import itertools
import re

from musicrep.errors import ConfigError

TASKS = ("multilabel", "multiclass", "regression", "key")

# Warm-up of the learning-rate schedule; NSynth's released configs use a longer one.
DEFAULT_WARMUP_STEPS = 1_000
NSYNTH_WARMUP_STEPS = 5_000


@dataclasses.dataclass(frozen=True)
class ProbePreset:
    """The fixed part of one downstream probe.

    Attributes:
        name: dataset name as in Table 2 (`MTT`, `GS_Key`, ...).
        task: one of `TASKS`.
        n_labels: number of targets the dataset has (informational; the data decide).
        hidden_units: width of each hidden ReLU layer; empty for a linear probe.
        dropout: dropout rate after each hidden ReLU (on the input for a linear probe).
        batch_size: training batch size.
        warmup_steps: linear warm-up of the learning rate from 0.
        description: what the labels are.
    """

    name: str
    task: str
    n_labels: int
    hidden_units: tuple[int, ...]
    dropout: float
    batch_size: int
    warmup_steps: int = DEFAULT_WARMUP_STEPS
    description: str = ""

    @property
    def layers_label(self) -> str:
        """Table 2's notation for the hidden layers: `linear`, `1×512`, `2×1024`."""
        if not self.hidden_units:
            return "linear"
        widths = set(self.hidden_units)
        if len(widths) == 1:
            return f"{len(self.hidden_units)}×{self.hidden_units[0]}"
        return "-".join(str(width) for width in self.hidden_units)


def _preset(name, task, n_labels, layers, width, dropout, batch, description, **kwargs):
    return ProbePreset(name, task, n_labels, (width,) * layers, dropout, batch,
                       description=description, **kwargs)


# Table 2 of SPEC.md §5, row by row.
PRESETS: dict[str, ProbePreset] = {
    preset.name: preset
    for preset in (
        _preset("MSDS", "multilabel", 50, 2, 1024, 0.5, 256, "MSD tagging (small split)"),
        _preset("MSD50", "multilabel", 50, 1, 512, 0.5, 256, "MSD top-50 tags"),
        _preset("MSD100", "multilabel", 100, 2, 2048, 0.5, 256, "MSD top-100 tags"),
        _preset("MSD500", "multilabel", 500, 3, 4096, 0.5, 256, "MSD top-500 tags"),
        _preset("AMM", "multilabel", 188, 1, 1024, 0.5, 256, "mood"),
        _preset("MuMu", "multilabel", 250, 0, 0, 0.3, 256, "genre (multilabel)"),
        _preset("MTT", "multilabel", 50, 1, 512, 0.5, 256, "MagnaTagATune top-50 tags"),
        _preset("NSynth_P", "multiclass", 112, 0, 0, 0.0, 64, "pitch",
                warmup_steps=NSYNTH_WARMUP_STEPS),
        _preset("NSynth_I", "multiclass", 11, 0, 0, 0.0, 64, "instrument family",
                warmup_steps=NSYNTH_WARMUP_STEPS),
        _preset("GTZAN", "multiclass", 10, 0, 0, 0.0, 2560, "genre"),
        _preset("Emo", "regression", 2, 1, 1024, 0.5, 512, "valence and arousal"),
        _preset("GS_Key", "key", 24, 1, 512, 0.8, 512, "GiantSteps key"),
        _preset("Jam-50", "multilabel", 50, 1, 512, 0.75, 256, "MTG-Jamendo top-50 tags"),
        _preset("Jam-All", "multilabel", 183, 2, 1024, 0.5, 256, "MTG-Jamendo all tags"),
        _preset("Jam-MT", "multilabel", 56, 1, 512, 0.75, 256, "MTG-Jamendo mood/theme"),
    )
}

# Used when no preset is named: a one-hidden-layer probe, the most common row of Table 2.
GENERIC_HIDDEN_UNITS = (512,)
GENERIC_DROPOUT = 0.5
GENERIC_BATCH_SIZE = 256


def get_preset(name: str) -> ProbePreset:
    """The preset called `name` (exact spelling of Table 2); ConfigError lists the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown probe preset {name!r}; choose one of {sorted(PRESETS)}") from None


def generic_preset(task: str) -> ProbePreset:
    """A preset for a dataset not in Table 2."""
    if task not in TASKS:
        raise ConfigError(f"unknown probe task {task!r}; choose one of {TASKS}")
    return ProbePreset("custom", task, 0, GENERIC_HIDDEN_UNITS, GENERIC_DROPOUT,
                       GENERIC_BATCH_SIZE, description="no Table 2 preset")


@dataclasses.dataclass(frozen=True)
class HyperParameters:
    """One point of the tuning grid."""

    learning_rate: float
    steps: int
    l2: float


@dataclasses.dataclass(frozen=True)
class Grid:
    """The tuning grid: every combination of the three lists is tried."""

    learning_rates: tuple[float, ...]
    steps: tuple[int, ...]
    l2s: tuple[float, ...]

    def points(self) -> list[HyperParameters]:
        return [HyperParameters(lr, steps, l2)
                for lr, steps, l2 in itertools.product(self.learning_rates, self.steps, self.l2s)]


# The ranges of the released configs: lr in 2e-5..5e-4, L2 in {0, 1e-6..1e-4}, 10k-40k
# steps. A coarse subset keeps a full probe under the spec's one hour on one machine.
DEFAULT_GRID = Grid(learning_rates=(2e-5, 1e-4, 5e-4), steps=(10_000, 20_000, 40_000),
                    l2s=(0.0, 1e-6, 1e-4))

_GRID_KEYS = {"lr": "learning_rates", "steps": "steps", "l2": "l2s"}


def parse_grid(text: str, *, base: Grid = DEFAULT_GRID) -> Grid:
    """Parse `lr=1e-4,5e-4,steps=2000,l2=0,1e-5` (a key's values separated by `,` `:` or `/`).

    Keys left out keep the values of `base`.
    """
    values = dataclasses.asdict(base)
    for item in filter(None, (part.strip() for part in re.split(r",(?=\s*[a-z0-9_]+\s*=)", text))):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or key not in _GRID_KEYS:
            raise ConfigError(f"bad grid item {item!r} in {text!r}; expected lr=…, steps=… or l2=…")
        cast = int if key == "steps" else float
        try:
            parsed = tuple(cast(float(value)) for value in re.split(r"[,:/;]", raw) if value.strip())
        except ValueError:
            raise ConfigError(f"bad value in grid item {item!r}") from None
        if not parsed:
            raise ConfigError(f"grid item {item!r} has no values")
        if key == "steps" and min(parsed) <= 0 or key != "steps" and min(parsed) < 0:
            raise ConfigError(f"grid item {item!r} needs positive values")
        values[_GRID_KEYS[key]] = parsed
    return Grid(**{name: tuple(value) for name, value in values.items()})
