"""`musicrep probe-suite`: several probes × several embedding models, one table.

The YAML names the embedding models and the probes; each probe entry holds settings of
`musicrep probe` (`musicrep.probes.config.ProbeConfig`: `label_column: key` is
`--label-column key`), on top of `defaults`. A model is what `--embeddings` takes (a
store, an embed output, a glob, a file) or a mapping of `EmbeddingInput` settings:
`embeddings` and the store/model options (`version`, `as_of`, `model_id`, `each_model`:
one model per model id of the input, named NAME/<id>, `storage_option`). Every key and
value is checked against those dataclasses before any probe runs (docs/configuration.md).
Each run writes its report to OUTPUT/<model>/<dataset>/. OUTPUT/suite.md is the table
with a row per model and a column per dataset and metric (cells `mean ± std` over
seeds); OUTPUT/suite.html compares the models in the layout of the paper's Tables 3/4 (a
row per task, a column per model, with the 95 % intervals and links to the reports).

    output: runs/suite
    defaults: {seeds: 3, grid: "lr=1e-4,5e-4,steps=20000,l2=0,1e-5"}
    models:
      F0-supervised: gs://bucket/embeddings/sup/embeddings-*.parquet
      nightly: {embeddings: gs://bucket/store, as_of: "2026-11-30T02:00:00Z"}
    probes:
      - {preset: MTT, labels: data/mtt/labels.csv}
      - {preset: GS_Key, labels: data/giantsteps/labels.csv}
      - {dataset: Instrument, task: multiclass, labels: catalog/labels.csv, label_column: instrument}
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import time
from typing import Any

import numpy as np
import yaml

from musicrep import dataconfig
from musicrep.errors import ConfigError
from musicrep.fileio import read_text, write_text
from musicrep.probes import cli, pages
from musicrep.probes.config import EmbeddingInput, ProbeConfig
from musicrep.probes.data import list_model_ids
from musicrep.probes.protocol import paired_difference
from musicrep.probes.report import metric_label
from musicrep.store.options import storage_options

logger = logging.getLogger(__name__)

SUITE_KEYS = ("output", "defaults", "models", "probes")
DEFAULT_OUTPUT = "probe-suite"
# Settings the suite sets itself for every run: where to write, and what to read (the model entry).
_RESERVED = ("embeddings", "output")


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


@dataclasses.dataclass(frozen=True)
class Suite:
    """A checked suite document: models by name, probes as ProbeConfig settings (defaults merged)."""

    output: str
    models: dict[str, EmbeddingInput]
    probes: tuple[dict[str, Any], ...]


def load_suite(text: str) -> Suite:
    """Parse and check a suite YAML document (every key and value; nothing runs before)."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"suite config is not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise ConfigError("suite config must be a mapping with 'models' and 'probes'")
    unknown = sorted(str(key) for key in document if key not in SUITE_KEYS)
    if unknown:
        raise ConfigError(f"suite config: unknown key(s) {unknown}; known: {list(SUITE_KEYS)}")
    for key, kind in (("models", dict), ("probes", list)):
        if not isinstance(document.get(key), kind) or not document[key]:
            raise ConfigError(f"suite config needs a non-empty {key!r} {kind.__name__}")
    output = document.get("output", DEFAULT_OUTPUT)
    if not isinstance(output, str):
        raise ConfigError(f"suite config: output must be str, got {output!r}")
    defaults = dataconfig.check_settings(ProbeConfig, document.get("defaults") or {},
                                         where="suite defaults", exclude=_RESERVED)
    probes = []
    for probe in document["probes"]:
        if not isinstance(probe, dict) or "labels" not in probe:
            raise ConfigError(f"each probe needs at least 'labels'; got {probe!r}")
        probes.append({**defaults, **dataconfig.check_settings(ProbeConfig, probe, where=f"probe {probe!r}",
                                                                exclude=_RESERVED)})
    models = {}
    for name, model in document["models"].items():
        entry = model if isinstance(model, dict) else {"embeddings": str(model)}
        models[str(name)] = dataconfig.from_mapping(EmbeddingInput, entry, where=f"model {name!r}")
    return Suite(output=output.rstrip("/"), models=models, probes=tuple(probes))


def model_entries(suite: Suite) -> dict[str, EmbeddingInput]:
    """Name → what to read; an entry with `each_model` becomes one entry per model id of
    its input, named NAME/<first 12 characters>."""
    entries = {}
    for name, source in suite.models.items():
        if not source.each_model:
            entries[name] = source
            continue
        ids = list_model_ids(source.embeddings, version=source.version, as_of=source.as_of,
                             options=storage_options(list(source.storage_option)))
        for model_id in ids:
            entries[f"{name}/{model_id[:12]}"] = dataclasses.replace(source, each_model=False, model_id=model_id)
    return entries


def probe_config(suite: Suite, model: str, probe: dict[str, Any], source: EmbeddingInput) -> ProbeConfig:
    """The ProbeConfig of one (model, probe) cell: the probe's settings (store options it
    gives are under the model entry's own), written to OUTPUT/<model>/<dataset>/."""
    settings = dict(probe)
    dataset = str(settings.get("dataset") or settings.get("preset") or settings["labels"])
    return dataconfig.from_mapping(ProbeConfig, {**settings, **dataconfig.given(source), "dataset": dataset,
                                                 "output": f"{suite.output}/{_slug(model)}/{_slug(dataset)}"},
                                   where=f"probe {probe!r} of model {model!r}")


def format_table(rows: dict[str, dict[tuple[str, str], tuple[float, float]]]) -> str:
    """Markdown table: rows = models, columns = (dataset, metric), cells mean ± std."""
    columns = list(dict.fromkeys(column for cells in rows.values() for column in cells))
    header = ["model"] + [f"{dataset} {metric_label(metric)}" for dataset, metric in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, cells in rows.items():
        shown = [f"{cells[c][0]:.3f} ± {cells[c][1]:.3f}" if c in cells else "—" for c in columns]
        lines.append("| " + " | ".join([model] + shown) + " |")
    return "\n".join(lines)


def _headline(report: dict) -> list[str]:
    # The paper's columns: mAP and ROC-AUC for tagging, weighted accuracy for key, one r²
    # per regression target, accuracy otherwise.
    names = list(report["metrics"])
    if report["task"] == "key":
        return ["mirex_key_score"]
    if report["task"] == "regression":
        return [name for name in names if name != "r2_mean"]
    return names


def _versus(first: tuple, model: str, data, result, metric: str) -> dict:
    """The cell's paired difference to the suite's first model on the same test tracks
    (`protocol.paired_difference`); nothing for the first model itself or when the two
    runs' test tracks differ."""
    first_model, first_data, first_result = first
    if model == first_model or not np.array_equal(data.track_ids["test"], first_data.track_ids["test"]):
        return {}
    settings = result.settings
    difference, interval = paired_difference(
        data.task, data.y["test"], result.test_predictions, first_result.test_predictions,
        metric=metric, resamples=settings.bootstrap_resamples, target_names=data.target_names,
        allow_descending_fifths=settings.allow_descending_fifths)
    return {"versus": {"model": first_model, "difference": difference,
                       "ci95": list(interval) if interval else None}}


def comparison_rows(cells: dict[str, dict[tuple[str, str], dict]]) -> list[dict]:
    """model → {(dataset, metric): cell} turned into the rows of `pages.suite_html`."""
    keys = list(dict.fromkeys(key for by_task in cells.values() for key in by_task))
    return [{"dataset": dataset, "metric": metric,
             "cells": {model: by_task[(dataset, metric)] for model, by_task in cells.items()
                       if (dataset, metric) in by_task}}
            for dataset, metric in keys]


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """What `musicrep probe-suite` returns.

    Attributes:
      output_dir: the suite's folder.
      table: the Markdown table (suite.md): a row per model, a column per dataset and metric.
      pages: suite.md, suite.json and suite.html.
      cells: model -> "dataset/metric" -> {"mean", "std", "ci95", "report", ("versus")}, as suite.json.
      runs: the probe runs, one per (model, probe).
      seconds: wall time.
    """

    output_dir: str
    table: str
    pages: tuple[str, ...]
    cells: dict[str, dict[str, dict]]
    runs: tuple[cli.ProbeRun, ...]
    seconds: float

    def summary(self) -> str:
        """The table (the command's purpose), then where the comparison page is."""
        return f"{self.table}\ncomparison page: {self.pages[-1]}"


def run(argv: list[str] | None = None) -> SuiteResult:
    """Entry point of `musicrep probe-suite`."""
    started = time.perf_counter()
    parser = argparse.ArgumentParser(prog="musicrep probe-suite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="suite YAML (local or gs://)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    suite = load_suite(read_text(args.config))
    output = suite.output
    entries = model_entries(suite)
    # Every cell's config is built (and checked) before the first probe runs.
    plan = [(model, probe_config(suite, model, probe, source))
            for model, source in entries.items() for probe in suite.probes]
    cells: dict[str, dict[tuple[str, str], dict]] = {model: {} for model in entries}
    first_runs: dict[str, tuple] = {}  # dataset -> the first model's (name, data, result)
    runs = []
    for model, config in plan:
        data, result, report = cli.execute(config)
        runs.append(cli.run_of(config, report))
        page = config.output[len(output):].lstrip("/") + "/report.html"
        first = first_runs.setdefault(report["dataset"], (model, data, result))
        for metric in _headline(report):
            mean, std = result.summary(metric)
            cells[model][(report["dataset"], metric)] = {
                "mean": mean, "std": std, "ci95": report["metrics"][metric]["ci95"],
                "report": page, **_versus(first, model, data, result, metric)}
    table = format_table({model: {key: (cell["mean"], cell["std"]) for key, cell in by_task.items()}
                          for model, by_task in cells.items()})
    by_key = {model: {f"{d}/{m}": cell for (d, m), cell in by_task.items()} for model, by_task in cells.items()}
    paths = (f"{output}/suite.md", f"{output}/suite.json", f"{output}/suite.html")
    write_text(paths[0], table + "\n")
    write_text(paths[1], json.dumps(by_key, indent=2))
    write_text(paths[2], pages.suite_html(comparison_rows(cells), list(cells)))
    return SuiteResult(output, table, paths, by_key, tuple(runs), time.perf_counter() - started)
