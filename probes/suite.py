"""`musicrep probe-suite`: several probes × several embedding models, one table.

The YAML names the embedding models (table rows) and the probes (table columns); each
probe entry holds `musicrep probe` options (`label_column: key` → `--label-column key`),
on top of `defaults`. Each run writes its report to OUTPUT/<model>/<dataset>/. The table
follows the layout of the paper's Tables 3/4: one row per model, one column per
dataset and metric, cells `mean ± std` over seeds.

    output: runs/suite
    defaults: {seeds: 3, grid: "lr=1e-4,5e-4,steps=20000,l2=0,1e-5"}
    models:
      F0-supervised: gs://bucket/embeddings/sup/embeddings-*.parquet
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

import yaml

from musicrep.errors import ConfigError
from musicrep.probes import cli
from musicrep.fileio import read_text, write_text
from musicrep.probes.report import metric_label

logger = logging.getLogger(__name__)

# Keys the suite sets itself for every run.
_RESERVED = {"embeddings", "output"}


def _flags(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            argv.append(flag)
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
    return suite


def probe_argv(suite: dict, model: str, probe: dict) -> list[str]:
    """The `musicrep probe` arguments of one (model, probe) cell."""
    options = {**(suite.get("defaults") or {}), **probe}
    dataset = str(options.get("dataset") or options.get("preset") or options["labels"])
    options["dataset"] = dataset
    output = suite.get("output", "probe-suite").rstrip("/")
    return _flags(options) + ["--embeddings", str(suite["models"][model]),
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


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="musicrep probe-suite",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="suite YAML (local or gs://)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    probe_parser = cli.build_parser()
    suite = load_suite(read_text(args.config))
    rows: dict[str, dict] = {}
    for model in suite["models"]:
        rows[model] = {}
        for probe in suite["probes"]:
            probe_args, unknown = probe_parser.parse_known_args(probe_argv(suite, model, probe))
            if unknown:
                raise ConfigError(f"probe {probe!r} has unknown options {unknown}")
            _, result, report = cli.execute(probe_args)
            for metric in _headline(report):
                rows[model][(report["dataset"], metric)] = result.summary(metric)
    table = format_table(rows)
    output = suite.get("output", "probe-suite").rstrip("/")
    write_text(f"{output}/suite.md", table + "\n")
    write_text(f"{output}/suite.json", json.dumps(
        {model: {f"{d}/{m}": {"mean": v[0], "std": v[1]} for (d, m), v in cells.items()}
         for model, cells in rows.items()}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(run())
