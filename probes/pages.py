"""Self-contained HTML pages: a probe's report.html and probe-suite's suite.html.

Figures are PNGs embedded as `data:` URIs and the style sheet is inline, so a page opens
from disk, a bucket or an e-mail with no network. A short script marks the page once
every figure has loaded (`<html data-figures-loaded="N/M">`) and flags a broken one in
red; the report test renders the page in headless Chromium and reads that mark.
"""
from __future__ import annotations

import html

from musicrep.probes import figures
from musicrep.probes.report import describe_source, metric_label

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; }
.meta { color: #555; font-size: 0.92em; } .broken { outline: 3px solid red; }
code { font-size: 0.9em; }
"""
# Marks the page when every figure has loaded (the test reads the mark) and outlines a
# figure that did not load.
_SCRIPT = """
window.addEventListener("load", function () {
  var images = document.querySelectorAll("figure img"), loaded = 0;
  images.forEach(function (image) {
    if (image.complete && image.naturalWidth > 0) { loaded += 1; } else { image.classList.add("broken"); }
  });
  document.documentElement.dataset.figuresLoaded = loaded + "/" + images.length;
});
"""


def _page(title: str, body: list[str]) -> str:
    return "\n".join(["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
                      f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
                      f"<script>{_SCRIPT}</script></head><body>", *body, "</body></html>", ""])


def _interval(value: list | None) -> str:
    return f"[{value[0]:.4f}, {value[1]:.4f}]" if value else "—"


def _figure(caption: str, figure) -> str:
    return (f'<figure><img src="{figures.png_data_uri(figure)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def report_html(report: dict) -> str:
    """report.html of one probe run: provenance, the headline table, every figure of
    `figures.REPORT_FIGURES` that applies to the task, and the grid."""
    embedding, tracks, selected = report["embedding"], report["tracks"], report["selected"]
    title = f"Probe report: {report['dataset']} ({report['task']})"
    body = [f"<h1>{html.escape(title)}</h1>",
            '<p class="meta">Embeddings of model <code>' + html.escape(embedding["model_id"]) +
            f"</code> (d={embedding['dim']}), read from "
            f"{html.escape(describe_source(report['inputs']['embeddings']))}. Labels "
            f"<code>{html.escape(str(report['inputs']['labels']))}</code>, tracks train "
            f"{tracks['train']}, valid {tracks['valid']}, test {tracks['test']}. Preset "
            f"{html.escape(report['preset']['name'])}: {html.escape(report['preset']['layers'])}, "
            f"selected lr {selected['learning_rate']:g}, {selected['steps']} steps, L2 "
            f"{selected['l2']:g}; seeds {report['protocol']['seeds']}.</p>",
            "<table><tr><th>metric</th><th>mean ± std over seeds</th>"
            "<th>95 % bootstrap interval</th><th>per seed</th></tr>"]
    for name, value in report["metrics"].items():
        per_seed = ", ".join(f"{v:.4f}" for v in value["per_seed"])
        body.append(f"<tr><td>{html.escape(metric_label(name))}</td><td>{value['mean']:.4f} ± "
                    f"{value['std']:.4f}</td><td>{_interval(value['ci95'])}</td><td>{per_seed}</td></tr>")
    body.append("</table>")
    baseline = report.get("diagnostics", {}).get("baseline")
    if baseline:
        scores = ", ".join(f"{metric_label(k)} {v:.4f}" for k, v in baseline.items() if k != "name")
        body.append(f'<p class="meta">Baseline, {html.escape(baseline["name"])}: {scores}.</p>')
    if "key_rule" in report:
        body.append(f'<p class="meta">Key rule: {html.escape(report["key_rule"])}.</p>')
    for caption, draw in figures.REPORT_FIGURES:
        figure = draw(report)
        if figure is not None:
            body.append(_figure(caption, figure))
    chosen = report["protocol"]["selection_metric"]
    body += [f"<h2>Grid (valid {html.escape(metric_label(chosen))}, first seed)</h2>",
             "<table><tr><th>lr</th><th>steps</th><th>L2</th><th>valid</th><th>fit s</th></tr>"]
    for point in report["grid"]:
        body.append(f"<tr><td>{point['learning_rate']:g}</td><td>{point['steps']}</td>"
                    f"<td>{point['l2']:g}</td><td>{point['valid'][chosen]:.4f}</td>"
                    f"<td>{point['fit_seconds']:.1f}</td></tr>")
    body.append("</table>")
    return _page(title, body)


def suite_html(rows: list[dict], models: list[str], *, title: str = "Probe suite") -> str:
    """suite.html: rows = (dataset, metric), columns = models (the layout of the paper's
    Tables 3/4), cells mean ± std with the 95 % interval, linked to each run's report.

    `rows`: [{"dataset", "metric", "cells": {model: {"mean", "std", "ci95", "report"}}}],
    as `musicrep.probes.suite.comparison_rows` makes them."""
    body = [f"<h1>{html.escape(title)}</h1>",
            '<p class="meta">Test scores: mean ± standard deviation over seeds, and the 95 % '
            "bootstrap interval of the seed mean over test tracks. Δ: the difference to the "
            "first model on the same test tracks, with its paired bootstrap interval (the same "
            "resampled tracks for both). Each cell links to its run's report.</p>",
            "<table><tr><th>task</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models) + "</tr>"]
    for row in rows:
        cells = []
        for model in models:
            cell = row["cells"].get(model)
            if cell is None:
                cells.append("<td>—</td>")
                continue
            shown = f"{cell['mean']:.3f} ± {cell['std']:.3f}<br><small>{_interval(cell.get('ci95'))}</small>"
            if cell.get("report"):
                shown = f'<a href="{html.escape(cell["report"])}">{shown}</a>'
            versus = cell.get("versus")
            if versus:
                shown += (f"<br><small>Δ vs {html.escape(versus['model'])} {versus['difference']:+.3f} "
                          f"{_interval(versus['ci95'])}</small>")
            cells.append(f"<td>{shown}</td>")
        body.append(f"<tr><td>{html.escape(row['dataset'])} {html.escape(metric_label(row['metric']))}</td>"
                    + "".join(cells) + "</tr>")
    body.append("</table>")
    figure = figures.suite_intervals(rows, models)
    if figure is not None:
        body.append(_figure("Each model's test score per task with its 95 % bootstrap interval", figure))
    return _page(title, body)
