"""`musicrep probe`: fit MLP probes on track embeddings and write a report.

Examples:
    musicrep probe --embeddings 'out/embeddings-*.parquet' --labels catalog/labels.csv \
        --task multiclass --label-column instrument --output out/probe-instrument
    musicrep probe --embeddings gs://bucket/store --as-of 2026-11-30T00:00:00Z ...   # a store, time travel
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from musicrep import fileio
from musicrep.errors import ConfigError
from musicrep.probes.data import (DEFAULT_LABEL_COLUMNS, ProbeData, join_tracks, list_model_ids,
                                  read_embeddings, read_labels)
from musicrep.probes.presets import (DEFAULT_GRID, PRESETS, TASKS, ProbePreset, generic_preset,
                                     get_preset, parse_grid)
from musicrep.probes.protocol import ProbeResult, ProbeSettings, run_probe
from musicrep.probes.report import build_report, metric_label, write_predictions, write_report
from musicrep.store.options import storage_options

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicrep probe", description=__doc__.splitlines()[0])
    parser.add_argument("--embeddings", required=True,
                        help="a reembed store (Delta table), an embed output directory, a "
                             "Parquet glob or file with track_id + embedding (local or gs://)")
    parser.add_argument("--version", type=int, default=None,
                        help="store only: probe this table version (default the latest)")
    parser.add_argument("--as-of", default=None, metavar="TIME",
                        help="store only: probe the version current at TIME (ISO 8601, UTC "
                             "if no zone, e.g. 2026-11-30T02:00:00Z)")
    parser.add_argument("--model-id", default=None,
                        help="probe only the rows of this model id (input holding several)")
    parser.add_argument("--each-model", action="store_true",
                        help="probe every model id of the input, one report each in "
                             "OUTPUT/<model id>/")
    parser.add_argument("--storage-option", action="append", default=[], metavar="KEY=VALUE",
                        help="delta-rs object-store option for a store (repeatable)")
    parser.add_argument("--labels", required=True,
                        help="CSV or Parquet with track_id, split (train/valid/test) and targets")
    parser.add_argument("--task", choices=TASKS,
                        help="probe task; defaults to the preset's")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a dataset of the spec's Table 2 (layers, dropout, batch, task)")
    parser.add_argument("--label-column", default=None,
                        help="target column(s), comma-separated; defaults: multilabel 'tags', "
                             "multiclass 'label', key 'key', regression 'valence,arousal'")
    parser.add_argument("--grid", default="",
                        help="tuning grid, e.g. 'lr=1e-4,5e-4,steps=10000,l2=0,1e-5'; keys "
                             "left out keep the default grid")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the final runs")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="learning-rate warm-up; default the preset's (1000, NSynth 5000)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples of the test tracks (0: no interval)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="probe tracks present on both sides and report the others "
                             "instead of failing")
    parser.add_argument("--descending-fifths", action="store_true",
                        help="key task: also credit a fifth below (MIREX since 2017)")
    parser.add_argument("--predictions", nargs="?", const="", default=None, metavar="PATH",
                        help="write test predictions to Parquet (default DIR/predictions.parquet)")
    parser.add_argument("--dataset", default=None, help="name shown in the report")
    parser.add_argument("--output", required=True, help="output directory (local or gs://)")
    return parser


def resolve_preset(args: argparse.Namespace) -> ProbePreset:
    """The preset named by --preset, or a generic one for --task; they must agree."""
    if args.preset is None:
        if args.task is None:
            raise ConfigError("give --task or --preset")
        return generic_preset(args.task)
    preset = get_preset(args.preset)
    if args.task is not None and args.task != preset.task:
        raise ConfigError(f"--task {args.task} contradicts preset {preset.name} ({preset.task})")
    return preset


def settings_from_args(args: argparse.Namespace, preset: ProbePreset) -> ProbeSettings:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1; got {args.seeds}")
    return ProbeSettings(preset=preset, grid=parse_grid(args.grid, base=DEFAULT_GRID),
                         seeds=tuple(range(args.seeds)), warmup_steps=args.warmup_steps,
                         bootstrap_resamples=args.bootstrap,
                         allow_descending_fifths=args.descending_fifths)


def model_outputs(args: argparse.Namespace) -> list[tuple[str | None, str]]:
    """(model id to select, output directory) per probe run: one run, or with
    --each-model one per model id of the input, in OUTPUT/<model id>/."""
    if not args.each_model:
        return [(args.model_id, args.output)]
    if args.model_id is not None:
        raise ConfigError("--each-model and --model-id exclude each other")
    if args.predictions:
        raise ConfigError("--each-model writes predictions into each model's folder: give "
                          "--predictions without a path")
    ids = list_model_ids(args.embeddings, version=args.version, as_of=args.as_of,
                         options=storage_options(args.storage_option))
    return [(model_id, fileio.join(args.output, model_slug(model_id))) for model_id in ids]


def model_slug(model_id: str) -> str:
    """A folder name for a model id (ids are sha256 hex or names)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in model_id)


def execute(args: argparse.Namespace) -> tuple[ProbeData, ProbeResult, dict]:
    """Read, probe, write one run (--model-id or the input's only model); returns the
    data, the result and the report."""
    preset = resolve_preset(args)
    settings = settings_from_args(args, preset)
    columns = (tuple(c.strip() for c in args.label_column.split(",") if c.strip())
               if args.label_column else DEFAULT_LABEL_COLUMNS[preset.task])
    embeddings = read_embeddings(args.embeddings, version=args.version, as_of=args.as_of,
                                 model_id=args.model_id,
                                 options=storage_options(args.storage_option))
    data = join_tracks(embeddings, read_labels(args.labels),
                       task=preset.task, label_columns=columns,
                       allow_missing=args.allow_missing)
    result = run_probe(data, settings)
    dataset = args.dataset or (preset.name if args.preset else "/".join(columns))
    report = build_report(data, result, dataset=dataset, embeddings=args.embeddings,
                          labels=args.labels)
    write_report(report, args.output)
    if args.predictions is not None:
        path = args.predictions or args.output.rstrip("/") + "/predictions.parquet"
        write_predictions(data, result, path)
    return data, result, report


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for model_id, output in model_outputs(args):
        _, result, report = execute(argparse.Namespace(**{**vars(args), "model_id": model_id,
                                                          "output": output}))
        print(f"{report['dataset']} ({report['task']}, model {report['embedding']['model_id']}):")
        for name, value in report["metrics"].items():
            interval = value["ci95"]
            shown = f"  95% [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""
            print(f"  {metric_label(name):>12}: {value['mean']:.4f} ± {value['std']:.4f}{shown}")
        print(f"  selected {dataclasses.asdict(result.selected)}; report in {output} "
              f"(open {fileio.join(output, 'report.html')})")
    return 0


if __name__ == "__main__":
    sys.exit(run())
