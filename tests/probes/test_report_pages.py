"""report.html and suite.html: the figures draw report.json's numbers, the page renders
in headless Chromium with every figure loaded, and it needs no network."""
import json
import os
import re
import shutil
import subprocess

import matplotlib.image
import mir_eval
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from musicrep.probes import figures, pages, suite
from musicrep.probes.data import join_tracks, read_embeddings, read_labels
from musicrep.probes.keys import key_name
from musicrep.probes.presets import DEFAULT_GRID, generic_preset, parse_grid
from musicrep.probes.protocol import ProbeSettings, run_probe
from musicrep.probes.report import build_report, write_report

COLUMNS = {"multiclass": ("instrument",), "key": ("key",), "multilabel": ("tags",),
           "regression": ("valence", "arousal")}
# Two learning rates × two step counts: a 2 × 2 heat map.
GRID = "lr=3e-3,1e-3,steps=60,120,l2=0"


@pytest.fixture(scope="module")
def reports(planted_files_once):
    """task -> (report, ProbeData, ProbeResult) of a short probe on planted data."""
    out = {}
    for task in COLUMNS:
        pattern, labels = planted_files_once(task)
        data = join_tracks(read_embeddings(pattern), read_labels(labels), task=task, label_columns=COLUMNS[task])
        settings = ProbeSettings(preset=generic_preset(task), grid=parse_grid(GRID, base=DEFAULT_GRID),
                                 seeds=(0, 1), warmup_steps=10, bootstrap_resamples=60)
        result = run_probe(data, settings)
        report = json.loads(json.dumps(build_report(data, result, dataset=task, embeddings=pattern, labels=labels)))
        out[task] = (report, data, result)
    return out


def test_the_report_json_holds_the_figures_numbers_checked_against_references(reports):
    report, data, result = reports["multiclass"]
    counts = np.asarray(report["diagnostics"]["confusion"]["counts"])
    expected = sum(confusion_matrix(data.y["test"], p.argmax(axis=1), labels=range(len(data.target_names)))
                   for p in result.test_predictions)
    np.testing.assert_array_equal(counts, expected)
    assert np.trace(counts) / counts.sum() == pytest.approx(report["metrics"]["accuracy"]["mean"])
    accuracy = report["metrics"]["accuracy"]
    for value, (low, high) in zip(accuracy["per_seed"], accuracy["per_seed_ci95"]):
        assert low <= value <= high
    for point in report["grid"]:
        curve = point["curve"]
        assert curve["step"][-1] == point["steps"] and len(curve["step"]) == 20
        assert curve["train_loss"][-1] < curve["train_loss"][0]  # planted signal: it learns
        assert all(v is not None for v in curve["valid_loss"])

    report, data, result = reports["key"]
    relations = report["diagnostics"]["key_relations"]
    names = {1.0: "same", 0.5: "fifth", 0.3: "relative", 0.2: "parallel", 0.0: "other"}
    by_mir_eval = dict.fromkeys(relations["classes"], 0)
    for prediction in result.test_predictions:
        for reference, estimate in zip(data.y["test"], prediction.argmax(axis=1)):
            weight = mir_eval.key.weighted_score(_mir_eval_key(reference), _mir_eval_key(estimate))
            by_mir_eval[names[weight]] += 1
    assert relations["counts"] == [by_mir_eval[name] for name in relations["classes"]]
    weighted = np.dot(relations["counts"], relations["weights"]) / sum(relations["counts"])
    assert weighted == pytest.approx(report["metrics"]["mirex_key_score"]["mean"])

    report, data, result = reports["multilabel"]
    per_label = report["diagnostics"]["per_label"]
    for j, name in enumerate(per_label["labels"]):
        aps = [average_precision_score(data.y["test"][:, j], p[:, j]) for p in result.test_predictions]
        aucs = [roc_auc_score(data.y["test"][:, j], p[:, j]) for p in result.test_predictions]
        assert per_label["average_precision"][j] == pytest.approx(np.mean(aps))
        assert per_label["roc_auc"][j] == pytest.approx(np.mean(aucs))
    assert np.mean(per_label["average_precision"]) == pytest.approx(report["metrics"]["mean_average_precision"]["mean"])

    report, data, result = reports["regression"]
    pairs = report["diagnostics"]["predicted_vs_true"]
    np.testing.assert_allclose(pairs["arousal"]["true"], data.y["test"][:, 1], rtol=1e-6)
    np.testing.assert_allclose(pairs["arousal"]["predicted"], np.mean(result.test_predictions, axis=0)[:, 1], rtol=1e-5)

    points = report["diagnostics"]["projection"]
    centred = data.x["test"] - data.x["test"].mean(axis=0)
    reference = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T
    for axis, column in (("x", 0), ("y", 1)):  # PCA is defined up to the sign of each axis
        ours = np.asarray(points[axis])
        sign = np.sign(ours @ reference[:, column])
        np.testing.assert_allclose(ours, sign * reference[:, column], atol=1e-3)


def _mir_eval_key(index: int) -> str:
    tonic, mode = key_name(int(index)).split()
    return f"{tonic} {mode}"


def test_every_figure_draws_the_numbers_of_report_json(reports):
    report, _, _ = reports["multiclass"]
    figure = figures.confusion(report)
    np.testing.assert_array_equal(figure.axes[0].images[0].get_array(), report["diagnostics"]["confusion"]["counts"])

    figure = figures.metric_intervals(report)
    accuracy = report["metrics"]["accuracy"]
    seeds_line, mean_line = [c.lines[0] for c in figure.axes[0].containers]
    np.testing.assert_allclose(seeds_line.get_ydata().astype(float), accuracy["per_seed"])
    np.testing.assert_allclose(mean_line.get_ydata().astype(float), [accuracy["mean"]])
    whisker = figure.axes[0].containers[1].lines[2][0].get_segments()[0]
    np.testing.assert_allclose(whisker[:, 1], accuracy["ci95"])
    seed_whiskers = figure.axes[0].containers[0].lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in seed_whiskers], accuracy["per_seed_ci95"])

    figure = figures.grid_heatmap(report)
    cells = figure.axes[0].images[0].get_array()
    rates = sorted({p["learning_rate"] for p in report["grid"]})
    steps = sorted({p["steps"] for p in report["grid"]})
    for point in report["grid"]:
        assert cells[rates.index(point["learning_rate"]), steps.index(point["steps"])] == pytest.approx(
            point["valid"]["accuracy"])

    figure = figures.learning_curves(report)
    drawn = {line.get_label(): line for line in figure.axes[1].lines}
    for point in report["grid"]:
        line = drawn[f"lr {point['learning_rate']:g}, {point['steps']} steps, L2 {point['l2']:g}"]
        np.testing.assert_allclose(line.get_xdata(), point["curve"]["step"])
        np.testing.assert_allclose(line.get_ydata(), point["curve"]["valid_loss"])

    figure = figures.embedding_map(report)
    points = report["diagnostics"]["projection"]
    drawn = np.concatenate([c.get_offsets() for c in figure.axes[0].collections])
    expected = np.stack([points["x"], points["y"]], axis=1)
    order = lambda a: a[np.lexsort(a.T)]  # noqa: E731  (one collection per label)
    np.testing.assert_allclose(order(drawn), order(expected), rtol=1e-6)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == sorted(set(points["colour"]))

    report, _, _ = reports["key"]
    relations = report["diagnostics"]["key_relations"]
    bars = figure_bars(figures.confusion(report).axes[1])
    assert bars == pytest.approx([c / sum(relations["counts"]) for c in relations["counts"]])

    report, _, _ = reports["multilabel"]
    per_label = report["diagnostics"]["per_label"]
    figure = figures.per_label(report)
    names = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    widths = [p.get_width() for p in figure.axes[0].patches]
    assert dict(zip(names, widths)) == pytest.approx(dict(zip(per_label["labels"], per_label["average_precision"])))
    auc_widths = [p.get_width() for p in figure.axes[1].patches]
    assert dict(zip(names, auc_widths)) == pytest.approx(dict(zip(per_label["labels"], per_label["roc_auc"])))

    report, _, _ = reports["regression"]
    figure = figures.predicted_vs_true(report)
    for ax, (name, values) in zip(figure.axes, report["diagnostics"]["predicted_vs_true"].items()):
        np.testing.assert_allclose(ax.collections[0].get_offsets(), np.stack([values["true"], values["predicted"]], 1))


def figure_bars(ax) -> list[float]:
    return [patch.get_height() for patch in ax.patches]


EXPECTED_FIGURES = {"multiclass": 5, "key": 5, "multilabel": 5, "regression": 5}


def _chromium() -> str:
    found = os.environ.get("MUSICREP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("no chromium (scripts/setup_env.sh installs Debian's with the test tools)")
    return found


def render(page: str, screenshot: str) -> str:
    """Loads `page` in headless Chromium with every host unresolvable (no network): writes
    a PNG screenshot and returns the DOM after the load event."""
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
              "--window-size=1200,2400", f"--user-data-dir={os.path.dirname(screenshot)}/chromium-profile"]
    subprocess.run(common + [f"--screenshot={screenshot}", "file://" + page], check=True, capture_output=True, timeout=120)
    dom = subprocess.run(common + ["--dump-dom", "file://" + page], check=True, capture_output=True, timeout=120)
    return dom.stdout.decode()


def _assert_rendered(page, screenshot: str, figures_expected: int, *, min_ink: float = 0.05) -> None:
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing fetched from elsewhere
    assert text.count("<img ") == figures_expected
    dom = render(str(page), screenshot)
    assert f'data-figures-loaded="{figures_expected}/{figures_expected}"' in dom
    pixels = matplotlib.image.imread(screenshot)[..., :3]
    assert pixels.shape[:2] == (2400, 1200)
    not_white = (pixels < 0.95).any(axis=2)
    assert not_white.mean() > min_ink and pixels.std() > 0.05  # text and figures, not a blank page


@pytest.mark.parametrize("task", list(COLUMNS))
def test_report_html_renders_in_chromium_with_every_figure(reports, tmp_path, task):
    report, _, _ = reports[task]
    write_report(report, str(tmp_path))
    assert json.loads((tmp_path / "report.json").read_text()) == report
    _assert_rendered(tmp_path / "report.html", str(tmp_path / f"report-{task}.png"), EXPECTED_FIGURES[task])


def test_a_broken_figure_is_reported_by_the_page(reports, tmp_path):
    report, _, _ = reports["multiclass"]
    page = pages.report_html(report)
    first = page.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    (tmp_path / "broken.html").write_text(page[:first] + "AAAA" + page[first + 40:])
    dom = render(str(tmp_path / "broken.html"), str(tmp_path / "broken.png"))
    assert 'data-figures-loaded="4/5"' in dom and 'class="broken"' in dom


def test_suite_page_compares_models_per_task(tmp_path):
    cells = {"pretrained": {("Instrument", "accuracy"): {"mean": 0.9, "std": 0.01, "ci95": [0.85, 0.95],
                                                         "report": "pretrained/Instrument/report.html"},
                            ("Key", "mirex_key_score"): {"mean": 0.6, "std": 0.02, "ci95": [0.5, 0.7],
                                                         "report": "pretrained/Key/report.html"}},
             "random": {("Instrument", "accuracy"): {"mean": 0.7, "std": 0.03, "ci95": [0.6, 0.8],
                                                     "report": "random/Instrument/report.html",
                                                     "versus": {"model": "pretrained", "difference": -0.2,
                                                                "ci95": [-0.25, -0.15]}}}}
    rows = suite.comparison_rows(cells)
    assert [(r["dataset"], r["metric"], sorted(r["cells"])) for r in rows] == [
        ("Instrument", "accuracy", ["pretrained", "random"]), ("Key", "mirex_key_score", ["pretrained"])]
    page = pages.suite_html(rows, ["pretrained", "random"])
    table = page[page.index("<table>"):page.index("</table>")]
    assert table.count("<tr>") == 3 and "<th>pretrained</th><th>random</th>" in table
    assert "0.900 ± 0.010<br><small>[0.8500, 0.9500]</small>" in table
    assert '<a href="random/Instrument/report.html">' in table and "<td>—</td>" in table
    assert "Δ vs pretrained -0.200 [-0.2500, -0.1500]" in table
    figure = figures.suite_intervals(rows, ["pretrained", "random"])
    means = [float(c.lines[0].get_xdata()[0]) for c in figure.axes[0].containers]
    assert means == [0.9, 0.7, 0.6]
    (tmp_path / "suite.html").write_text(page)
    _assert_rendered(tmp_path / "suite.html", str(tmp_path / "suite.png"), 1, min_ink=0.005)
