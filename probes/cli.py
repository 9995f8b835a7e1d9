"""`musicrep probe`: fit MLP probes on track embeddings and write a report.

Examples:
    musicrep probe --embeddings 'out/embeddings-*.parquet' --labels catalog/labels.csv \
        --task multiclass --label-column instrument --output out/probe-instrument
    musicrep probe --embeddings gs://bucket/store --as-of 2026-11-30T00:00:00Z ...   # a store, time travel
"""
from __future__ import annotations

import dataclasses
import logging
import time

from musicrep import fileio
from musicrep.probes.config import ProbeConfig
from musicrep.probes.data import (DEFAULT_LABEL_COLUMNS, ProbeData, join_tracks, list_model_ids,
                                  read_embeddings, read_labels)
from musicrep.probes.presets import DEFAULT_GRID, ProbePreset, generic_preset, get_preset, parse_grid
from musicrep.probes.protocol import ProbeResult, ProbeSettings, run_probe, selection_metric
from musicrep.probes.report import build_report, metric_label, write_predictions, write_report
from musicrep.store.options import storage_options

logger = logging.getLogger(__name__)


def resolve_preset(config: ProbeConfig) -> ProbePreset:
    """The preset named by `preset`, or a generic one for `task` (ProbeConfig checks they agree)."""
    return get_preset(config.preset) if config.preset is not None else generic_preset(config.task)


def settings_from_config(config: ProbeConfig, preset: ProbePreset) -> ProbeSettings:
    return ProbeSettings(preset=preset, grid=parse_grid(config.grid, base=DEFAULT_GRID),
                         seeds=tuple(range(config.seeds)), warmup_steps=config.warmup_steps,
                         bootstrap_resamples=config.bootstrap,
                         allow_descending_fifths=config.descending_fifths)


def model_runs(config: ProbeConfig) -> list[ProbeConfig]:
    """One config per probe run: the given one, or with each_model one per model id of
    the input, writing to OUTPUT/<model id>/."""
    source = config.input
    if not source.each_model:
        return [config]
    ids = list_model_ids(source.embeddings, version=source.version, as_of=source.as_of,
                         options=storage_options(list(source.storage_option)))
    return [dataclasses.replace(config, output=fileio.join(config.output, model_slug(model_id)),
                                input=dataclasses.replace(source, each_model=False, model_id=model_id))
            for model_id in ids]


def model_slug(model_id: str) -> str:
    """A folder name for a model id (ids are sha256 hex or names)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in model_id)


@dataclasses.dataclass(frozen=True)
class ProbeRun:
    """One probe run's outcome, as report.json says it.

    Attributes:
      dataset, task, model_id: what was probed.
      output_dir: the run's folder (report.json, report.md, report.html).
      metric: the headline metric (the task's selection metric); mean, std over seeds and
        the 95 % bootstrap interval of the seed mean (None without bootstrap).
      metrics: every metric: name -> {"mean", "std", "ci95"}.
      predictions: the test predictions' Parquet, None when not asked for.
    """

    dataset: str
    task: str
    model_id: str
    output_dir: str
    metric: str
    mean: float
    std: float
    ci95: tuple[float, float] | None
    metrics: dict[str, dict]
    predictions: str | None

    @property
    def report_json(self) -> str:
        return fileio.join(self.output_dir, "report.json")

    @property
    def report_html(self) -> str:
        return fileio.join(self.output_dir, "report.html")

    def summary(self) -> str:
        shown = []
        for name, value in self.metrics.items():
            interval = value["ci95"]
            shown.append(f"{metric_label(name)} {value['mean']:.4f} ± {value['std']:.4f}"
                         + (f" 95% [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""))
        return f"{self.dataset} ({self.task}, model {self.model_id}): {'; '.join(shown)}; open {self.report_html}"


@dataclasses.dataclass(frozen=True)
class ProbeCommandResult:
    """What `musicrep probe` returns: one run, or one per model id with --each-model."""

    runs: tuple[ProbeRun, ...]
    seconds: float

    def summary(self) -> str:
        """One line per run."""
        return "\n".join(run.summary() for run in self.runs)


def execute(config: ProbeConfig) -> tuple[ProbeData, ProbeResult, dict]:
    """Read, probe, write one run (model_id or the input's only model); returns the
    data, the result and the report."""
    preset = resolve_preset(config)
    settings = settings_from_config(config, preset)
    columns = (tuple(c.strip() for c in config.label_column.split(",") if c.strip())
               if config.label_column else DEFAULT_LABEL_COLUMNS[preset.task])
    source = config.input
    embeddings = read_embeddings(source.embeddings, version=source.version, as_of=source.as_of,
                                 model_id=source.model_id,
                                 options=storage_options(list(source.storage_option)))
    data = join_tracks(embeddings, read_labels(config.labels),
                       task=preset.task, label_columns=columns,
                       allow_missing=config.allow_missing)
    result = run_probe(data, settings)
    dataset = config.dataset or (preset.name if config.preset else "/".join(columns))
    report = build_report(data, result, dataset=dataset, embeddings=source.embeddings,
                          labels=config.labels)
    write_report(report, config.output)
    if config.predictions_path is not None:
        write_predictions(data, result, config.predictions_path)
    return data, result, report


def run_of(config: ProbeConfig, report: dict) -> ProbeRun:
    """The ProbeRun of a finished run, from its report."""
    metric = selection_metric(report["task"])
    head = report["metrics"][metric]
    return ProbeRun(
        dataset=report["dataset"], task=report["task"], model_id=report["embedding"]["model_id"],
        output_dir=config.output, metric=metric, mean=head["mean"], std=head["std"],
        ci95=tuple(head["ci95"]) if head["ci95"] else None,
        metrics={name: {key: value[key] for key in ("mean", "std", "ci95")}
                 for name, value in report["metrics"].items()},
        predictions=config.predictions_path)


def run(argv: list[str] | ProbeConfig | None = None) -> ProbeCommandResult:
    """Entry point of `musicrep probe` (its command line, or a ProbeConfig already validated)."""
    started = time.perf_counter()
    given = argv if isinstance(argv, ProbeConfig) else ProbeConfig.from_argv(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runs = []
    for config in model_runs(given):
        _, result, report = execute(config)
        logger.info("selected %s for %s", dataclasses.asdict(result.selected), config.output)
        runs.append(run_of(config, report))
    return ProbeCommandResult(tuple(runs), time.perf_counter() - started)
