"""Write a probe's outcome: report.json (machine), report.md and report.html (a person),
predictions.

report.json holds every number report.html draws (`diagnostics`: confusion counts, key
relations, per-label AP/ROC-AUC, predicted vs true, the 2-D map of the test embeddings;
learning curves in `grid`), so a figure can always be checked against it."""
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

REPORT_VERSION = 2
MAP_POINTS = 3000  # test tracks drawn on the 2-D map at most (a seeded subset beyond)
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
        "inputs": {"embeddings": (data.source.as_dict() if data.source is not None
                                  else {"kind": "unknown", "path": embeddings}),
                   "labels": labels,
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
                  "fit_seconds": round(point.fit_seconds, 2),
                  "curve": {"step": [c[0] for c in point.curve],
                            "train_loss": [c[1] for c in point.curve],
                            "valid_loss": [c[2] for c in point.curve]}}
                 for point in result.grid],
        "selected": dataclasses.asdict(result.selected),
        "metrics": {name: {"mean": result.summary(name)[0], "std": result.summary(name)[1],
                           "per_seed": values,
                           "ci95": list(result.intervals[name]) if name in result.intervals
                           else None,
                           "per_seed_ci95": [list(i) for i in result.seed_intervals[name]]
                           if name in result.seed_intervals else None}
                    for name, values in result.test.items()},
        "diagnostics": diagnostics(data, result),
        "seconds": round(result.seconds, 2),
    }
    if data.task == "key":
        report["key_rule"] = metrics.key_rule(settings.allow_descending_fifths)
    return report


def _finite(values) -> list:
    """JSON has no NaN: a value that is not finite becomes null."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, np.float64)]


def diagnostics(data: ProbeData, result: ProbeResult) -> dict:
    """The test split's numbers behind the report's figures (see the module docstring)."""
    task, names = data.task, list(data.target_names)
    y_true, predictions = data.y["test"], result.test_predictions
    out: dict = {"projection": projection(data)}
    if task in ("multiclass", "key"):
        n = len(names)
        counts = np.zeros((n, n), np.int64)  # rows: reference, columns: prediction
        for prediction in predictions:
            np.add.at(counts, (y_true, prediction.argmax(axis=1)), 1)
        majority = np.bincount(data.y["train"], minlength=n).argmax()
        out["confusion"] = {"labels": names, "counts": counts.tolist(),
                            "seeds_summed": len(predictions)}
        out["baseline"] = {"name": f"always the train split's most frequent class ({names[majority]})",
                           "accuracy": float(np.mean(y_true == majority))}
    if task == "key":
        rule = result.settings.allow_descending_fifths
        codes = np.concatenate([metrics.key_relations(y_true, p.argmax(axis=1),
                                                      allow_descending_fifths=rule)
                                for p in predictions])
        out["key_relations"] = {"classes": list(metrics.KEY_RELATIONS),
                                "weights": list(metrics.KEY_RELATION_WEIGHTS),
                                "counts": np.bincount(codes, minlength=len(metrics.KEY_RELATIONS)).tolist()}
        out["baseline"]["mirex_key_score"] = metrics.mirex_key_score(
            y_true, np.full_like(y_true, majority), allow_descending_fifths=rule)
    if task == "multilabel":
        out["per_label"] = {
            "labels": names,
            "average_precision": _finite(np.mean([metrics.average_precision_per_label(y_true, p)
                                                  for p in predictions], axis=0)),
            "roc_auc": _finite(np.mean([metrics.roc_auc_per_label(y_true, p) for p in predictions], axis=0)),
            "positives": y_true.sum(axis=0).astype(int).tolist()}
    if task == "regression":
        mean_prediction = np.mean(predictions, axis=0)
        out["predicted_vs_true"] = {name: {"true": _finite(y_true[:, j]),
                                           "predicted": _finite(mean_prediction[:, j])}
                                    for j, name in enumerate(names)}
    return out


def projection(data: ProbeData, *, max_points: int = MAP_POINTS) -> dict:
    """PCA of the test embeddings to 2-D, each point with the label it is coloured by:
    the class (multiclass, key), the track's most common tag (multilabel) or the first
    target (regression)."""
    x = data.x["test"].astype(np.float64)
    rows = np.arange(x.shape[0])
    if rows.size > max_points:
        rows = np.sort(np.random.default_rng(0).choice(rows, max_points, replace=False))
    centred = x - x.mean(axis=0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    coordinates = centred[rows] @ basis[:2].T
    variance = singular ** 2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    y, names = data.y["test"][rows], data.target_names
    if data.task in ("multiclass", "key"):
        colour, numeric = [names[i] for i in y], False
    elif data.task == "multilabel":
        frequency = data.y["test"].sum(axis=0)
        colour = [names[int(np.argmax(np.where(row > 0, frequency, -1)))] if row.any() else "(no tag)"
                  for row in y]
        numeric = False
    else:
        colour, numeric = _finite(y[:, 0]), True
    return {"method": "PCA of the test embeddings", "explained_variance_ratio": _finite(explained),
            "x": _finite(coordinates[:, 0]), "y": _finite(coordinates[:, 1] if coordinates.shape[1] > 1
                                                          else np.zeros(len(rows))),
            "track_ids": [str(t) for t in data.track_ids["test"][rows]],
            "colour": colour, "colour_by": data.label_columns[0], "numeric": numeric,
            "tracks_shown": int(rows.size), "tracks": int(x.shape[0])}


def format_markdown(report: dict) -> str:
    """report.md: the headline table first, then the grid and the counts."""
    tracks, embedding, selected = report["tracks"], report["embedding"], report["selected"]
    lines = [f"# Probe report: {report['dataset']} ({report['task']})", "",
             f"Embeddings `{embedding['model_id']}` (d={embedding['dim']}); preset "
             f"{report['preset']['name']}: {report['preset']['layers']}, dropout "
             f"{report['preset']['dropout']}, batch {report['preset']['batch_size']}.",
             f"Read from {describe_source(report['inputs']['embeddings'])}.", "",
             "| metric | mean ± std over seeds | 95 % bootstrap interval |", "|---|---|---|"]
    for name, value in report["metrics"].items():
        interval = value["ci95"]
        shown = f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "—"
        lines.append(f"| {metric_label(name)} | {value['mean']:.4f} ± {value['std']:.4f} | {shown} |")
    baseline = report.get("diagnostics", {}).get("baseline")
    if baseline:
        scores = ", ".join(f"{metric_label(k)} {v:.4f}" for k, v in baseline.items() if k != "name")
        lines += ["", f"Baseline, {baseline['name']}: {scores}."]
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


def describe_source(source: dict) -> str:
    """One line of where the embeddings were read (report.json's `inputs.embeddings`)."""
    kinds = {"delta": "the store", "manifest": "the embed output", "glob": "the glob",
             "parquet": "the Parquet file"}
    text = f"{kinds.get(source.get('kind'), 'the input')} {source.get('path')}"
    if source.get("version") is not None:
        text += f", table version {source['version']} (committed {source.get('version_timestamp')})"
    if source.get("files") is not None:
        text += f", {source['files']} file(s)"
    ids = source.get("model_ids") or []
    if len(ids) > 1:
        text += f"; it holds models {', '.join(ids)}, of which {source.get('selected_model_id')} was probed"
    return text


def write_report(report: dict, output_dir: str) -> None:
    """DIR/report.json, DIR/report.md and DIR/report.html (local or gs://)."""
    from musicrep.probes import pages  # matplotlib is loaded only to write a report

    fileio.write_text(fileio.join(output_dir, "report.json"), json.dumps(report, indent=2))
    fileio.write_text(fileio.join(output_dir, "report.md"), format_markdown(report))
    fileio.write_text(fileio.join(output_dir, "report.html"), pages.report_html(report))
    logger.info("wrote %s/report.json, report.md and report.html", output_dir)


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
