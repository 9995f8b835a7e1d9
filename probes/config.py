"""The settings of `musicrep probe` and of each run of `musicrep probe-suite`, as data.

`ProbeConfig` is read by the probe's command line (options generated from its fields), by
the suite's YAML (a probe entry and `defaults` hold ProbeConfig settings, a model entry
holds `EmbeddingInput` settings) and by the code; see musicrep.dataconfig and
docs/configuration.md. No TensorFlow here: options and YAML are checked before it loads.
"""
from __future__ import annotations

import argparse
import dataclasses

from musicrep import dataconfig
from musicrep.dataconfig import check, nested, setting
from musicrep.errors import ConfigError
from musicrep.probes.presets import PRESETS, TASKS


@dataclasses.dataclass(frozen=True)
class EmbeddingInput:
    """Where the embeddings are and which of their rows to probe (a suite's model entry)."""

    embeddings: str = setting(
        help="a reembed store (Delta table), an embed output directory, a Parquet glob or file "
        "with track_id + embedding (local or gs://)")
    version: int | None = setting(None, minimum=0, help="store only: probe this table version (default the latest)")
    as_of: str | None = setting(
        None, metavar="TIME", help="store only: probe the version current at TIME (ISO 8601, UTC if no zone, "
        "e.g. 2026-11-30T02:00:00Z)")
    model_id: str | None = setting(None, help="probe only the rows of this model id (input holding several)")
    each_model: bool = setting(False, help="probe every model id of the input, one report each in OUTPUT/<model id>/")
    storage_option: tuple[str, ...] = setting(
        (), metavar="KEY=VALUE", help="delta-rs object-store option for a store (repeatable; a list in YAML)")

    def __post_init__(self) -> None:
        check(self)
        if self.each_model and self.model_id is not None:
            raise ConfigError("--each-model and --model-id exclude each other")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Every setting of one `musicrep probe` run."""

    input: EmbeddingInput = nested(EmbeddingInput, required=True)
    labels: str = setting(help="CSV or Parquet with track_id, split (train/valid/test) and targets")
    output: str = setting(help="output directory (local or gs://)")
    task: str | None = setting(None, choices=TASKS, help="probe task; defaults to the preset's")
    preset: str | None = setting(None, choices=tuple(sorted(PRESETS)),
                                 help="a dataset of the spec's Table 2 (layers, dropout, batch, task)")
    label_column: str | None = setting(
        None, help="target column(s), comma-separated; defaults: multilabel 'tags', multiclass 'label', "
        "key 'key', regression 'valence,arousal'")
    grid: str = setting("", help="tuning grid, e.g. 'lr=1e-4,5e-4,steps=10000,l2=0,1e-5'; keys left out keep "
                        "the default grid")
    seeds: int = setting(3, minimum=1, help="seeds of the final runs")
    warmup_steps: int | None = setting(None, minimum=0,
                                       help="learning-rate warm-up; default the preset's (1000, NSynth 5000)")
    bootstrap: int = setting(1000, minimum=0, help="bootstrap resamples of the test tracks (0: no interval)")
    allow_missing: bool = setting(
        False, help="probe tracks present on both sides and report the others instead of failing")
    descending_fifths: bool = setting(False, help="key task: also credit a fifth below (MIREX since 2017)")
    predictions: bool | str = setting(
        False, optional_value=True, metavar="PATH",
        help="write test predictions to Parquet: alone (true in YAML) DIR/predictions.parquet, or PATH")
    dataset: str | None = setting(None, help="name shown in the report")

    def __post_init__(self) -> None:
        check(self)
        if self.preset is None and self.task is None:
            raise ConfigError("give --task or --preset")
        if self.preset is not None and self.task is not None and self.task != PRESETS[self.preset].task:
            raise ConfigError(f"--task {self.task} contradicts preset {self.preset} ({PRESETS[self.preset].task})")
        if self.input.each_model and isinstance(self.predictions, str) and self.predictions:
            raise ConfigError("--each-model writes predictions into each model's folder: give "
                              "--predictions without a path")

    @classmethod
    def from_argv(cls, argv: list[str] | None) -> ProbeConfig:
        """The command line of `musicrep probe`, parsed and validated (no TensorFlow yet)."""
        return dataconfig.from_arguments(cls, build_parser().parse_args(argv))

    @property
    def predictions_path(self) -> str | None:
        """Where the test predictions go, None for nowhere."""
        if self.predictions is False:
            return None
        if self.predictions is True or not self.predictions:
            return self.output.rstrip("/") + "/predictions.parquet"
        return self.predictions


def build_parser() -> argparse.ArgumentParser:
    """One option per ProbeConfig setting (musicrep.dataconfig)."""
    parser = argparse.ArgumentParser(
        prog="musicrep probe", description="Fit MLP probes on track embeddings and write a report."
    )
    dataconfig.add_arguments(parser, ProbeConfig)
    return parser
