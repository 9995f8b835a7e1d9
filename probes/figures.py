"""The figures of a probe report, drawn with matplotlib from report.json alone.

Each function takes the report dict (`musicrep.probes.report.build_report`) and returns a
matplotlib Figure, or None where the figure does not apply to the task; what it draws is
read from the report and nothing else, so the page and the JSON cannot disagree.
"""
from __future__ import annotations

import base64
import io
from typing import Callable

import numpy as np
from matplotlib.figure import Figure

from musicrep.probes.report import metric_label as _label

SELECTED_COLOUR = "#d62728"
DPI = 100


def metric_intervals(report: dict) -> Figure | None:
    """Per metric: every seed's test value with its bootstrap interval, then the seed mean
    with the interval of the mean."""
    metrics = report["metrics"]
    if not metrics:
        return None
    seeds = report["protocol"]["seeds"]
    figure = Figure(figsize=(3.2 * len(metrics), 3.0), dpi=DPI, layout="constrained")
    for ax, (name, value) in zip(np.atleast_1d(figure.subplots(1, len(metrics))), metrics.items()):
        positions = np.arange(len(seeds) + 1)
        points = list(value["per_seed"]) + [value["mean"]]
        intervals = (list(value["per_seed_ci95"] or [[v, v] for v in value["per_seed"]])
                     + [value["ci95"] or [value["mean"], value["mean"]]])
        low = [p - i[0] for p, i in zip(points, intervals)]
        high = [i[1] - p for p, i in zip(points, intervals)]
        ax.errorbar(positions[:-1], points[:-1], yerr=[low[:-1], high[:-1]], fmt="o",
                    color="#1f77b4", capsize=4, label="seed")
        ax.errorbar(positions[-1:], points[-1:], yerr=[low[-1:], high[-1:]], fmt="s",
                    color=SELECTED_COLOUR, capsize=4, label="mean of seeds")
        ax.set_xticks(positions, [f"seed {s}" for s in seeds] + ["mean"])
        ax.set_title(f"{_label(name)} (test, 95 % bootstrap)")
        ax.grid(axis="y", alpha=0.3)
    return figure


def grid_heatmap(report: dict) -> Figure | None:
    """The grid's valid selection metric: learning rate × steps, one panel per L2."""
    chosen = report["protocol"]["selection_metric"]
    grid = report["grid"]
    rates = sorted({p["learning_rate"] for p in grid})
    steps = sorted({p["steps"] for p in grid})
    l2s = sorted({p["l2"] for p in grid})
    figure = Figure(figsize=(1.2 + 1.1 * len(steps) * len(l2s) + 1.0, 0.9 + 0.55 * len(rates)),
                    dpi=DPI, layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(l2s), sharey=True))
    values = [p["valid"][chosen] for p in grid]
    low, high = min(values), max(values)
    selected = report["selected"]
    for ax, l2 in zip(axes, l2s):
        cells = np.full((len(rates), len(steps)), np.nan)
        for p in grid:
            if p["l2"] == l2:
                cells[rates.index(p["learning_rate"]), steps.index(p["steps"])] = p["valid"][chosen]
        spread = (high - low) or 0.01  # all points alike: a scale around the one value
        image = ax.imshow(cells, cmap="viridis", vmin=low if high > low else low - spread,
                          vmax=high if high > low else high + spread, aspect="auto")
        for i, j in zip(*np.nonzero(np.isfinite(cells))):
            ax.text(j, i, f"{cells[i, j]:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if cells[i, j] < (low + high) / 2 else "black")
        if selected["l2"] == l2:
            i, j = rates.index(selected["learning_rate"]), steps.index(selected["steps"])
            ax.add_patch(_outline(j, i))
        ax.set_xticks(range(len(steps)), [str(s) for s in steps])
        ax.set_yticks(range(len(rates)), [f"{r:g}" for r in rates])
        ax.set_xlabel("steps")
        ax.set_title(f"L2 {l2:g}")
    axes[0].set_ylabel("learning rate")
    figure.colorbar(image, ax=list(axes), label=f"valid {_label(chosen)}")
    return figure


def _outline(x: float, y: float):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=SELECTED_COLOUR, linewidth=2.5)


def learning_curves(report: dict) -> Figure | None:
    """Training and valid loss against steps for every grid point (first seed)."""
    grid = [p for p in report["grid"] if p.get("curve", {}).get("step")]
    if not grid:
        return None
    selected = report["selected"]
    figure = Figure(figsize=(9.0, 3.2), dpi=DPI, layout="constrained")
    train_ax, valid_ax = figure.subplots(1, 2, sharey=True)
    for point in grid:
        is_selected = all(point[k] == selected[k] for k in ("learning_rate", "steps", "l2"))
        name = f"lr {point['learning_rate']:g}, {point['steps']} steps, L2 {point['l2']:g}"
        style = {"color": SELECTED_COLOUR, "linewidth": 2.2, "zorder": 3} if is_selected else {"alpha": 0.7}
        curve = point["curve"]
        train_ax.plot(curve["step"], curve["train_loss"], label=name, **style)
        if any(v is not None for v in curve["valid_loss"]):
            valid_ax.plot(curve["step"], [np.nan if v is None else v for v in curve["valid_loss"]],
                          label=name, **style)
    train_ax.set_title("training loss (mean since previous point)")
    valid_ax.set_title("valid loss")
    for ax in (train_ax, valid_ax):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    train_ax.set_ylabel("loss")
    valid_ax.legend(fontsize=7, loc="upper right")
    return figure


def confusion(report: dict) -> Figure | None:
    """Test confusion counts (rows: reference, columns: prediction) over the seeds; for
    the key task beside mir_eval's relationship classes of the estimates."""
    matrix = report["diagnostics"].get("confusion")
    if matrix is None:
        return None
    counts = np.asarray(matrix["counts"])
    names = matrix["labels"]
    relations = report["diagnostics"].get("key_relations")
    size = 2.5 + 0.32 * len(names)
    figure = Figure(figsize=(size + (4.0 if relations else 0), size), dpi=DPI, layout="constrained")
    if relations:
        ax, rel_ax = figure.subplots(1, 2, width_ratios=[size, 4.0])
    else:
        ax = figure.subplots()
    image = ax.imshow(counts, cmap="Blues")
    if len(names) <= 12:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(f"test confusion, {matrix['seeds_summed']} seed(s) summed")
    figure.colorbar(image, ax=ax, shrink=0.6, label="tracks × seeds")
    if relations:
        total = max(sum(relations["counts"]), 1)
        shares = [c / total for c in relations["counts"]]
        bars = rel_ax.bar(relations["classes"], shares, color="#1f77b4")
        for bar, weight in zip(bars, relations["weights"]):
            rel_ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"×{weight:g}",
                        ha="center", va="bottom", fontsize=8)
        rel_ax.set_ylabel("share of estimates")
        rel_ax.set_title("estimate vs reference (MIREX weight)")
        rel_ax.tick_params(axis="x", rotation=30)
    return figure


def per_label(report: dict) -> Figure | None:
    """Per-tag test AP and ROC-AUC (mean over seeds), best AP first; tags that cannot be
    scored (no positive or no negative in test) are left out."""
    labels = report["diagnostics"].get("per_label")
    if labels is None:
        return None
    rows = [(name, ap, auc) for name, ap, auc in zip(labels["labels"], labels["average_precision"],
                                                      labels["roc_auc"]) if ap is not None]
    rows.sort(key=lambda row: -row[1])
    figure = Figure(figsize=(8.0, 1.2 + 0.28 * max(len(rows), 1)), dpi=DPI, layout="constrained")
    ap_ax, auc_ax = figure.subplots(1, 2, sharey=True)
    positions = np.arange(len(rows))
    ap_ax.barh(positions, [r[1] for r in rows], color="#1f77b4")
    auc_ax.barh(positions, [r[2] for r in rows], color="#2ca02c")
    ap_ax.set_yticks(positions, [r[0] for r in rows], fontsize=8)
    ap_ax.invert_yaxis()
    ap_ax.set_title("average precision (test)")
    auc_ax.set_title("ROC-AUC (test)")
    for ax in (ap_ax, auc_ax):
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
    return figure


def predicted_vs_true(report: dict) -> Figure | None:
    """Regression: predicted (mean over seeds) against the reference, per target."""
    columns = report["diagnostics"].get("predicted_vs_true")
    if columns is None:
        return None
    figure = Figure(figsize=(3.6 * len(columns), 3.4), dpi=DPI, layout="constrained")
    for ax, (name, values) in zip(np.atleast_1d(figure.subplots(1, len(columns))), columns.items()):
        true = np.asarray(values["true"], np.float64)
        predicted = np.asarray(values["predicted"], np.float64)
        ax.scatter(true, predicted, s=9, alpha=0.6)
        span = [np.nanmin([true.min(), predicted.min()]), np.nanmax([true.max(), predicted.max()])]
        ax.plot(span, span, color="grey", linestyle="--", linewidth=1)
        r2 = report["metrics"].get(f"r2_{name}", {}).get("mean")
        ax.set_title(f"{name}" + (f" (R² {r2:.3f}, seed mean)" if r2 is not None else ""))
        ax.set_xlabel("reference")
        ax.set_ylabel("predicted")
    return figure


def embedding_map(report: dict) -> Figure | None:
    """The test embeddings projected to 2-D (PCA), coloured by label."""
    points = report["diagnostics"].get("projection")
    if not points or not points["x"]:
        return None
    figure = Figure(figsize=(6.4, 4.8), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    x, y = np.asarray(points["x"], np.float64), np.asarray(points["y"], np.float64)
    if points["numeric"]:
        scatter = ax.scatter(x, y, c=np.asarray(points["colour"], np.float64), s=12, cmap="viridis")
        figure.colorbar(scatter, ax=ax, label=points["colour_by"])
    else:
        colour = np.asarray(points["colour"], dtype=object)
        labels = list(dict.fromkeys(sorted(colour)))
        palette = _palette(len(labels))
        for label, rgb in zip(labels, palette):
            mask = colour == label
            ax.scatter(x[mask], y[mask], s=12, color=rgb, label=label)
        ax.legend(title=points["colour_by"], fontsize=7, ncols=2 if len(labels) > 12 else 1,
                  loc="center left", bbox_to_anchor=(1.01, 0.5))
    ratio = points["explained_variance_ratio"]
    ax.set_xlabel(f"PC 1 ({100 * (ratio[0] or 0):.1f} % of variance)")
    ax.set_ylabel(f"PC 2 ({100 * (ratio[1] or 0):.1f} % of variance)")
    shown = (f"{points['tracks_shown']} of {points['tracks']}" if points["tracks_shown"] < points["tracks"]
             else str(points["tracks"]))
    ax.set_title(f"test embeddings, PCA ({shown} tracks)")
    return figure


def _palette(n: int) -> list:
    from matplotlib import colormaps

    name = "tab10" if n <= 10 else "tab20"
    colours = colormaps[name].colors
    return [colours[i % len(colours)] for i in range(n)]


def suite_intervals(rows: list[dict], models: list[str]) -> Figure | None:
    """The suite: per (dataset, metric), each model's seed mean with its 95 % interval."""
    if not rows:
        return None
    figure = Figure(figsize=(7.0, 0.6 + 0.45 * len(rows) * len(models)), dpi=DPI, layout="constrained")
    ax = figure.subplots()
    palette = _palette(len(models))
    ticks, names = [], []
    for r, row in enumerate(rows):
        for m, model in enumerate(models):
            cell = row["cells"].get(model)
            position = r * (len(models) + 1) + m
            if cell is None:
                continue
            interval = cell.get("ci95") or [cell["mean"], cell["mean"]]
            ax.errorbar([cell["mean"]], [position], xerr=[[cell["mean"] - interval[0]], [interval[1] - cell["mean"]]],
                        fmt="o", color=palette[m], capsize=3, label=model if r == 0 else None)
        ticks.append(r * (len(models) + 1) + (len(models) - 1) / 2)
        names.append(f"{row['dataset']} {_label(row['metric'])}")
    ax.set_yticks(ticks, names)
    ax.margins(y=0.2)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("test score (seed mean, 95 % bootstrap interval)")
    ax.legend(fontsize=8, loc="best")
    return figure


# The report page's figures, in page order, with their captions.
REPORT_FIGURES: tuple[tuple[str, Callable[[dict], Figure | None]], ...] = (
    ("Test metrics per seed and their mean, with 95 % bootstrap intervals over test tracks", metric_intervals),
    ("Confusion matrix on test", confusion),
    ("Per-label scores on test", per_label),
    ("Predicted vs reference on test", predicted_vs_true),
    ("Grid search: the valid selection metric per point (selected point outlined)", grid_heatmap),
    ("Learning curves of the grid points (first seed; selected point in red)", learning_curves),
    ("2-D map of the test embeddings", embedding_map),
)


def png_data_uri(figure: Figure) -> str:
    """The figure as an embedded PNG (`data:` URI), so a page needs no other file."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
