"""`musicrep probe-suite`: several probes × several embedding models, one table.

The YAML names the embedding models and the probes; each probe entry holds `musicrep
probe` options (`label_column: key` → `--label-column key`), on top of `defaults`. A
model is what `--embeddings` takes (a store, an embed output, a glob, a file) or a
mapping with `embeddings` and the store/model options (`version`, `as_of`, `model_id`,
`each_model`: one model per model id of the input, named NAME/<id>, `storage_option`).
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
import json
import logging
import re
import sys

import numpy as np
import yaml

from musicrep.errors import ConfigError
from musicrep.probes import cli, pages
from musicrep.fileio import read_text, write_text
from musicrep.probes.data import list_model_ids
from musicrep.probes.protocol import paired_difference
from musicrep.probes.report import metric_label
from musicrep.store.options import storage_options

logger = logging.getLogger(__name__)

# Keys the suite sets itself for every run.
_RESERVED = {"embeddings", "output"}
# What a model entry may say (besides `embeddings`): where and which rows to read.
_MODEL_KEYS = {"embeddings", "version", "as_of", "model_id", "each_model", "storage_option"}


def _flags(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for item in value:
                argv += [flag, str(item)]
        elif value is not False and value is not None:
            argv += [flag, str(value)]
    return argv


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def load_suite(text: str) -> dict:
    """Parse and check a suite YAML document."""
    try:
        suite = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"suite config is not valid YAML: {error}") from error
    if not isinstance(suite, dict):
        raise ConfigError("suite config must be a mapping with 'models' and 'probes'")
    for key, kind in (("models", dict), ("probes", list)):
        if not isinstance(suite.get(key), kind) or not suite[key]:
            raise ConfigError(f"suite config needs a non-empty {key!r} {kind.__name__}")
    for probe in suite["probes"]:
        if not isinstance(probe, dict) or "labels" not in probe:
            raise ConfigError(f"each probe needs at least 'labels'; got {probe!r}")
        if _RESERVED & set(probe):
            raise ConfigError(f"probe {probe!r} may not set {sorted(_RESERVED & set(probe))}")
    for name, model in suite["models"].items():
        if isinstance(model, dict) and ("embeddings" not in model or set(model) - _MODEL_KEYS):
            raise ConfigError(f"model {name!r} needs 'embeddings' and may set only "
                              f"{sorted(_MODEL_KEYS - {'embeddings'})}; got {sorted(model)}")
    return suite


def model_entries(suite: dict) -> dict[str, dict]:
    """Name → the `musicrep probe` options of its embeddings; an entry with `each_model`
    becomes one entry per model id of its input, named NAME/<first 12 characters>."""
    entries = {}
    for name, model in suite["models"].items():
        options = dict(model) if isinstance(model, dict) else {"embeddings": model}
        if not options.pop("each_model", False):
            entries[str(name)] = options
            continue
        ids = list_model_ids(str(options["embeddings"]), version=options.get("version"),
                             as_of=options.get("as_of"),
                             options=storage_options(options.get("storage_option")))
        for model_id in ids:
            entries[f"{name}/{model_id[:12]}"] = {**options, "model_id": model_id}
    return entries


def probe_argv(suite: dict, model: str, probe: dict, entry: dict | None = None) -> list[str]:
    """The `musicrep probe` arguments of one (model, probe) cell; `entry` is the model's
    item of `model_entries` (default: suite["models"][model] as the embeddings)."""
    entry = entry if entry is not None else {"embeddings": suite["models"][model]}
    options = {**(suite.get("defaults") or {}), **probe}
    dataset = str(options.get("dataset") or options.get("preset") or options["labels"])
    options["dataset"] = dataset
    output = suite.get("output", "probe-suite").rstrip("/")
    return _flags(options) + _flags({**entry, "embeddings": str(entry["embeddings"])}) + [
        "--output", f"{output}/{_slug(model)}/{_slug(dataset)}"]


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


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="musicrep probe-suite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="suite YAML (local or gs://)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    probe_parser = cli.build_parser()
    suite = load_suite(read_text(args.config))
    output = suite.get("output", "probe-suite").rstrip("/")
    cells: dict[str, dict[tuple[str, str], dict]] = {}
    first_runs: dict[str, tuple] = {}  # dataset -> the first model's (name, data, result)
    for model, entry in model_entries(suite).items():
        cells[model] = {}
        for probe in suite["probes"]:
            probe_args, unknown = probe_parser.parse_known_args(probe_argv(suite, model, probe, entry))
            if unknown:
                raise ConfigError(f"probe {probe!r} has unknown options {unknown}")
            data, result, report = cli.execute(probe_args)
            page = probe_args.output[len(output):].lstrip("/") + "/report.html"
            first = first_runs.setdefault(report["dataset"], (model, data, result))
            for metric in _headline(report):
                mean, std = result.summary(metric)
                cells[model][(report["dataset"], metric)] = {
                    "mean": mean, "std": std, "ci95": report["metrics"][metric]["ci95"],
                    "report": page, **_versus(first, model, data, result, metric)}
    table = format_table({model: {key: (cell["mean"], cell["std"]) for key, cell in by_task.items()}
                          for model, by_task in cells.items()})
    write_text(f"{output}/suite.md", table + "\n")
    write_text(f"{output}/suite.json", json.dumps(
        {model: {f"{d}/{m}": cell for (d, m), cell in by_task.items()} for model, by_task in cells.items()},
        indent=2))
    write_text(f"{output}/suite.html", pages.suite_html(comparison_rows(cells), list(cells)))
    print(table)
    print(f"comparison page: {output}/suite.html")
    return 0


if __name__ == "__main__":
    sys.exit(run())
