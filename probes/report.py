"""Write a probe's outcome: report.json (machine), report.md (a person), predictions."""
from __future__ import annotations

import dataclasses
import io
import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from musicrep import fileio
from musicrep.model.schedules import ADAM_BETA_1, ADAM_BETA_2, ADAM_EPSILON
from musicrep.probes import metrics
from musicrep.probes.data import SPLITS, ProbeData
from musicrep.probes.protocol import ProbeResult, selection_metric

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
# Short headings for tables (report.md and the suite's).
METRIC_LABELS = {"mean_average_precision": "mAP", "roc_auc": "ROC-AUC", "accuracy": "Acc",
                 "mirex_key_score": "Weighted acc", "r2_mean": "R² mean"}


def metric_label(name: str) -> str:
    if name.startswith("r2_") and name not in METRIC_LABELS:
        return f"R² {name[3:]}"
    return METRIC_LABELS.get(name, name)


def build_report(data: ProbeData, result: ProbeResult, *, dataset: str,
                 embeddings: str, labels: str) -> dict:
    """The content of report.json."""
    settings = result.settings
    preset = settings.preset
    report = {
        "report_version": REPORT_VERSION,
        "dataset": dataset,
        "task": data.task,
        "preset": {**dataclasses.asdict(preset), "layers": preset.layers_label},
        "inputs": {"embeddings": embeddings, "labels": labels,
                   "label_columns": list(data.label_columns)},
        "embedding": {"model_id": data.model_id,
                      "feature_config_sha256": data.feature_config_sha256,
                      "dim": data.embedding_dim},
        "tracks": {**{split: int(data.x[split].shape[0]) for split in SPLITS},
                   "left_out": data.missing.as_dict()},
        "labels": {"count": len(data.target_names), "names": list(data.target_names),
                   "left_out_no_positive_or_negative": result.labels_left_out},
        "protocol": {"seeds": list(settings.seeds),
                     "warmup_steps": settings.effective_warmup_steps,
                     "optimizer": f"Adam(beta_1={ADAM_BETA_1}, beta_2={ADAM_BETA_2}, epsilon={ADAM_EPSILON})",
                     "schedule": "linear warm-up from 0, then cosine decay to 0",
                     "selection_metric": selection_metric(data.task),
                     "bootstrap_resamples": settings.bootstrap_resamples,
                     "interval": "95 % percentile bootstrap over test tracks, seed mean"},
        "grid": [{**dataclasses.asdict(point.hyper), "valid": point.valid,
                  "fit_seconds": round(point.fit_seconds, 2)} for point in result.grid],
        "selected": dataclasses.asdict(result.selected),
        "metrics": {name: {"mean": result.summary(name)[0], "std": result.summary(name)[1],
                           "per_seed": values,
                           "ci95": list(result.intervals[name]) if name in result.intervals
                           else None}
                    for name, values in result.test.items()},
        "seconds": round(result.seconds, 2),
    }
    if data.task == "key":
        report["key_rule"] = metrics.key_rule(settings.allow_descending_fifths)
    return report


def format_markdown(report: dict) -> str:
    """report.md: the headline table first, then the grid and the counts."""
    tracks, embedding, selected = report["tracks"], report["embedding"], report["selected"]
    lines = [f"# Probe report: {report['dataset']} ({report['task']})", "",
             f"Embeddings `{embedding['model_id']}` (d={embedding['dim']}); preset "
             f"{report['preset']['name']}: {report['preset']['layers']}, dropout "
             f"{report['preset']['dropout']}, batch {report['preset']['batch_size']}.", "",
             "| metric | mean ± std over seeds | 95 % bootstrap interval |", "|---|---|---|"]
    for name, value in report["metrics"].items():
        interval = value["ci95"]
        shown = f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "—"
        lines.append(f"| {metric_label(name)} | {value['mean']:.4f} ± {value['std']:.4f} | {shown} |")
    left_out = tracks["left_out"]
    lines += ["", f"Selected on valid: lr {selected['learning_rate']:g}, steps "
              f"{selected['steps']}, L2 {selected['l2']:g}; seeds {report['protocol']['seeds']}.",
              "", f"Tracks: train {tracks['train']}, valid {tracks['valid']}, test "
              f"{tracks['test']}; left out: {left_out['labelled_without_embedding']['count']} "
              f"labelled without embedding, {left_out['embedded_without_label']['count']} "
              "embedded without label."]
    if report["labels"]["left_out_no_positive_or_negative"]:
        counts = report["labels"]["left_out_no_positive_or_negative"]
        lines.append(f"Labels: {report['labels']['count']}; left out of the macro averages "
                     f"(no positive or no negative): valid {counts['valid']}, test {counts['test']}.")
    if "key_rule" in report:
        lines.append(f"Key rule: {report['key_rule']}.")
    chosen = report["protocol"]["selection_metric"]
    lines += ["", f"## Grid (valid {metric_label(chosen)}, first seed)", "",
              "| lr | steps | L2 | valid | fit s |", "|---|---|---|---|---|"]
    for point in report["grid"]:
        lines.append(f"| {point['learning_rate']:g} | {point['steps']} | {point['l2']:g} | "
                     f"{point['valid'][chosen]:.4f} | {point['fit_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, output_dir: str) -> None:
    """DIR/report.json and DIR/report.md (local or gs://)."""
    fileio.write_text(fileio.join(output_dir, "report.json"), json.dumps(report, indent=2))
    fileio.write_text(fileio.join(output_dir, "report.md"), format_markdown(report))
    logger.info("wrote %s/report.json and report.md", output_dir)


def predictions_table(data: ProbeData, result: ProbeResult) -> pa.Table:
    """One row per (test track, seed): the probe's outputs, and the decoded class for
    multiclass and key. Tag/class/column names are in the schema metadata."""
    n = data.x["test"].shape[0]
    columns = {"track_id": [], "seed": [], "prediction": []}
    for seed, prediction in zip(result.settings.seeds, result.test_predictions):
        columns["track_id"].extend(data.track_ids["test"].tolist())
        columns["seed"].extend([seed] * n)
        columns["prediction"].extend(np.asarray(prediction, np.float32).tolist())
    table = pa.table({"track_id": pa.array(columns["track_id"], pa.string()),
                      "seed": pa.array(columns["seed"], pa.int32()),
                      "prediction": pa.array(columns["prediction"], pa.list_(pa.float32()))})
    if data.task in ("multiclass", "key"):
        names = np.asarray(data.target_names, dtype=object)
        predicted = np.concatenate([p.argmax(axis=1) for p in result.test_predictions])
        table = table.append_column("predicted", pa.array(names[predicted].tolist(), pa.string()))
        truth = np.tile(data.y["test"], len(result.test_predictions))
        table = table.append_column("reference", pa.array(names[truth].tolist(), pa.string()))
    metadata = {"task": data.task, "target_names": json.dumps(list(data.target_names)),
                "model_id": data.model_id}
    return table.replace_schema_metadata(metadata)


def write_predictions(data: ProbeData, result: ProbeResult, path: str) -> None:
    """Test predictions as Parquet at `path`."""
    buffer = io.BytesIO()
    pq.write_table(predictions_table(data, result), buffer)
    fileio.write_bytes(path, buffer.getvalue())
    logger.info("wrote test predictions to %s", path)
