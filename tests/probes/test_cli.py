"""`musicrep probe` and `musicrep probe-suite` end to end on temporary files."""
import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from musicrep import cli as musicrep_cli
from musicrep.probes import cli, suite
from musicrep.probes.data import MissingTracksError, join_tracks, read_embeddings, read_labels

FAST = ["--grid", "lr=3e-3,1e-4,steps=200,l2=0,1e-5", "--warmup-steps", "20",
        "--bootstrap", "50"]


def test_probe_multiclass_end_to_end(planted_files, tmp_path, capsys):
    embeddings, labels = planted_files("multiclass")
    out = tmp_path / "out"
    result = cli.run(["--embeddings", embeddings, "--labels", labels,
                      "--task", "multiclass", "--label-column", "instrument",
                      "--seeds", "2", "--output", str(out), "--predictions", *FAST])
    report = json.loads((out / "report.json").read_text())
    (run,) = result.runs
    assert (run.output_dir, run.report_json, run.dataset, run.task) == (
        str(out), str(out / "report.json"), "instrument", "multiclass")
    assert run.predictions == f"{out}/predictions.parquet" and (out / "predictions.parquet").exists()
    assert run.metric == "accuracy" and 0.0 <= run.mean <= 1.0 and run.model_id == "planted-model"
    assert (run.mean, run.std, list(run.ci95)) == tuple(report["metrics"]["accuracy"][k] for k in ("mean", "std", "ci95"))
    assert run.ci95[0] <= run.mean <= run.ci95[1] and result.seconds > 0
    # The command line prints one line per run: the metrics and where the report is.
    assert musicrep_cli.main(["probe", "--embeddings", embeddings, "--labels", labels, "--task", "multiclass",
                              "--label-column", "instrument", "--seeds", "1", "--output", str(tmp_path / "again"),
                              "--grid", "lr=3e-3,steps=50,l2=0", "--warmup-steps", "5", "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    again = json.loads((tmp_path / "again" / "report.json").read_text())["metrics"]["accuracy"]
    assert printed == [f"instrument (multiclass, model planted-model): Acc {again['mean']:.4f} ± 0.0000; "
                       f"open {tmp_path / 'again' / 'report.html'}"]
    assert report["task"] == "multiclass" and report["dataset"] == "instrument"
    assert report["embedding"] == {"model_id": "planted-model", "feature_config_sha256": "f" * 64,
                                   "dim": 16}
    assert report["tracks"]["train"] == 480 and report["tracks"]["test"] == 160
    assert report["tracks"]["left_out"]["labelled_without_embedding"]["count"] == 0
    assert len(report["grid"]) == 4
    assert report["selected"] in [{k: p[k] for k in ("learning_rate", "steps", "l2")}
                                  for p in report["grid"]]
    accuracy = report["metrics"]["accuracy"]
    assert len(accuracy["per_seed"]) == 2 and accuracy["mean"] > 0.9
    assert accuracy["ci95"][0] <= accuracy["mean"] <= accuracy["ci95"][1]
    markdown = (out / "report.md").read_text()
    assert "| Acc |" in markdown and "## Grid" in markdown
    predictions = pq.read_table(out / "predictions.parquet")
    assert predictions.num_rows == 2 * 160
    assert set(predictions.column_names) >= {"track_id", "seed", "prediction", "predicted",
                                             "reference"}
    agree = np.mean(np.array(predictions.column("predicted").to_pylist())
                    == np.array(predictions.column("reference").to_pylist()))
    assert agree == pytest.approx(accuracy["mean"])


def test_probe_and_suite_take_another_models_parquet(planted_arrays, embedding_writer, tmp_path, capsys):
    # Embeddings made elsewhere: pandas writes a plain list<double> column and no provenance.
    track_ids, vectors, columns = planted_arrays("multiclass")
    pd.DataFrame({"track_id": track_ids, "embedding": list(vectors.astype(np.float64))}).to_parquet(
        tmp_path / "other.parquet")
    labels = embedding_writer[1](tmp_path / "labels.csv", track_ids, columns)
    out = tmp_path / "out"
    result = cli.run(["--embeddings", str(tmp_path / "other.parquet"), "--labels", labels,
                      "--task", "multiclass", "--label-column", "instrument", "--seeds", "1",
                      "--output", str(out), "--grid", "lr=3e-3,steps=200,l2=0",
                      "--warmup-steps", "20", "--bootstrap", "0"])
    assert result.runs[0].model_id == "unknown" and result.runs[0].ci95 is None
    report = json.loads((out / "report.json").read_text())
    assert report["embedding"] == {"model_id": "unknown", "feature_config_sha256": "unknown", "dim": 16}
    assert report["metrics"]["accuracy"]["mean"] > 0.9
    config = tmp_path / "suite.yaml"
    config.write_text(f"""
output: {tmp_path / 'suite'}
defaults: {{seeds: 1, grid: "lr=3e-3,steps=200,l2=0", warmup_steps: 20, bootstrap: 0}}
models: {{other: "{tmp_path / 'other.parquet'}"}}
probes: [{{dataset: Instrument, task: multiclass, labels: "{labels}", label_column: instrument}}]
""")
    assert musicrep_cli.main(["probe-suite", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| other | ")


def test_probe_key_preset_reports_its_rule(planted_files, tmp_path):
    embeddings, labels = planted_files("key")
    out = tmp_path / "key"
    result = cli.run(["--embeddings", embeddings, "--labels", labels, "--preset", "GS_Key",
                      "--seeds", "1", "--descending-fifths", "--output", str(out),
                      "--grid", "lr=3e-3,steps=300,l2=0", "--warmup-steps", "30",
                      "--bootstrap", "0"])
    report = json.loads((out / "report.json").read_text())
    (run,) = result.runs
    assert (run.dataset, run.task, run.metric) == ("GS_Key", "key", "mirex_key_score")
    assert run.mean == report["metrics"]["mirex_key_score"]["mean"] and 0.0 <= run.mean <= 1.0
    assert set(run.metrics) == {"mirex_key_score", "accuracy"} and run.predictions is None
    assert report["dataset"] == "GS_Key" and report["preset"]["dropout"] == 0.8
    assert report["key_rule"].startswith("MIREX since 2017")
    assert report["metrics"]["mirex_key_score"]["ci95"] is None
    assert "Key rule" in (out / "report.md").read_text()


def test_missing_tracks_fail_clearly_and_allow_missing_reports_them(
        tmp_path, rng, planted_arrays, embedding_writer, capsys):
    write_embeddings, write_labels = embedding_writer
    track_ids, vectors, columns = planted_arrays("multiclass")
    embeddings = write_embeddings(tmp_path / "emb", track_ids[3:], vectors[3:])
    labels = write_labels(tmp_path / "labels.csv", track_ids, columns)
    with pytest.raises(MissingTracksError,
                       match=r"3 labelled track\(s\) have no embedding \('trk00000', 'trk00001', "
                             r"'trk00002'\).*--allow-missing"):
        join_tracks(read_embeddings(embeddings), read_labels(labels), task="multiclass",
                    label_columns=("instrument",))
    argv = ["--embeddings", embeddings, "--labels", labels, "--task", "multiclass",
            "--label-column", "instrument", "--seeds", "1", "--output", str(tmp_path / "out"),
            "--grid", "lr=3e-3,steps=100,l2=0", "--warmup-steps", "10", "--bootstrap", "0"]
    assert musicrep_cli.main(["probe", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("musicrep probe: 3 labelled track(s) have no embedding")
    assert error.count("\n") == 1 and "Traceback" not in error
    result = cli.run(argv + ["--allow-missing"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result.runs[0].mean == report["metrics"]["accuracy"]["mean"]
    assert report["tracks"]["left_out"]["labelled_without_embedding"] == {
        "count": 3, "examples": ["trk00000", "trk00001", "trk00002"]}
    assert "3 labelled without embedding" in (tmp_path / "out" / "report.md").read_text()


def test_probe_refuses_contradicting_task(planted_files, tmp_path, capsys):
    embeddings, labels = planted_files("multiclass")
    assert musicrep_cli.main(["probe", "--embeddings", embeddings, "--labels", labels, "--preset", "MTT",
                              "--task", "key", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "musicrep probe: --task key contradicts preset MTT (multilabel)\n"


def test_probe_suite_prints_the_table(planted_files, tmp_path, capsys):
    multiclass = planted_files("multiclass")
    multilabel = planted_files("multilabel")
    config = tmp_path / "suite.yaml"
    config.write_text(f"""
output: {tmp_path / 'suite'}
defaults: {{seeds: 1, grid: "lr=3e-3,steps=200,l2=0", warmup_steps: 20, bootstrap: 0}}
models:
  planted: "{multiclass[0]}"
probes:
  - {{dataset: Instrument, task: multiclass, labels: "{multiclass[1]}", label_column: instrument}}
""")
    result = suite.run(["--config", str(config)])
    assert result.pages == tuple(f"{tmp_path / 'suite'}/suite.{kind}" for kind in ("md", "json", "html"))
    assert all(os.path.exists(page) for page in result.pages)
    assert json.loads((tmp_path / "suite" / "suite.json").read_text()) == result.cells
    (run,) = result.runs
    assert run.output_dir == str(tmp_path / "suite" / "planted" / "Instrument")
    assert result.cells["planted"]["Instrument/accuracy"]["mean"] == run.mean
    table = result.summary().splitlines()
    assert table[0] == "| model | Instrument Acc |"
    assert table[2].startswith("| planted | 0.9") or table[2].startswith("| planted | 1.0")
    assert (tmp_path / "suite" / "planted" / "Instrument" / "report.json").exists()
    assert (tmp_path / "suite" / "suite.md").read_text().startswith("| model |")
    # Two models, tagging columns: mAP and ROC-AUC side by side per dataset.
    config.write_text(f"""
output: {tmp_path / 'suite2'}
defaults: {{seeds: 1, grid: "lr=3e-3,steps=200,l2=0", warmup_steps: 20, bootstrap: 0,
           allow_missing: true}}
models: {{first: "{multilabel[0]}", second: "{multilabel[0]}"}}
probes: [{{preset: MTT, labels: "{multilabel[1]}"}}]
""")
    assert musicrep_cli.main(["probe-suite", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| model | MTT mAP | MTT ROC-AUC |"
    assert [line.split("|")[1].strip() for line in lines[2:-1]] == ["first", "second"]
    assert lines[-1] == f"comparison page: {tmp_path / 'suite2'}/suite.html"
    cells = json.loads((tmp_path / "suite2" / "suite.json").read_text())["second"]["MTT/roc_auc"]
    assert cells["report"] == "second/MTT/report.html" and cells["ci95"] is None  # bootstrap 0
    # The same embeddings twice: no difference to the first model on the same tracks.
    assert cells["versus"] == {"model": "first", "difference": 0.0, "ci95": None}
    assert "versus" not in json.loads((tmp_path / "suite2" / "suite.json").read_text())["first"]["MTT/roc_auc"]
    assert (tmp_path / "suite2" / "second" / "MTT" / "report.html").exists()


def test_suite_config_errors(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("models: {}\nprobes: []\n")
    assert musicrep_cli.main(["probe-suite", "--config", str(config)]) == 2
    assert capsys.readouterr().err == "musicrep probe-suite: suite config needs a non-empty 'models' dict\n"


@pytest.mark.parametrize("document, message", [
    ("models: {m: x}\nprobes: [{labels: l.csv, task: multiclass, label_colum: instrument}]\n",
     "probe {'labels': 'l.csv', 'task': 'multiclass', 'label_colum': 'instrument'}: unknown setting(s) "
     "['label_colum']; known: "),
    ("models: {m: x}\ndefaults: {seeds: 0}\nprobes: [{labels: l.csv, task: key}]\n", "seeds must be ≥ 1, got 0"),
    ("models: {m: x}\ndefaults: {seeds: three}\nprobes: [{labels: l.csv, task: key}]\n",
     "seeds must be int, got 'three'"),
    ("models: {m: x}\nprobes: [{labels: l.csv, task: tagging}]\n",
     "task must be one of ['multilabel', 'multiclass', 'regression', 'key'], got 'tagging'"),
    ("models: {m: x}\nprobes: [{labels: l.csv, task: key, output: o}]\n", "may not set ['output']"),
    ("models: {m: {embeddings: x, as_off: now}}\nprobes: [{labels: l.csv, task: key}]\n",
     "model 'm': unknown setting(s) ['as_off']; known: "),
    ("models: {m: {version: 2}}\nprobes: [{labels: l.csv, task: key}]\n",
     "model 'm': missing required setting(s) embeddings (--embeddings)"),
    ("models: {m: x}\nprobes: [{labels: l.csv}]\n", "give --task or --preset"),
    ("models: {m: x}\nprobe: []\nprobes: [{labels: l.csv}]\n", "suite config: unknown key(s) ['probe']"),
])
def test_suite_settings_are_checked_against_the_probe_config(tmp_path, capsys, document, message):
    config = tmp_path / "bad.yaml"
    config.write_text(f"output: {tmp_path / 'out'}\n" + document)
    assert musicrep_cli.main(["probe-suite", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("musicrep probe-suite: ") and message in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()  # refused before any probe ran


def test_suite_yaml_reads_values_as_the_command_line_does(tmp_path):
    # PyYAML reads 1e-4 as text; a list or a single string for a repeatable option.
    loaded = suite.load_suite(f"""
output: {tmp_path}/
defaults: {{warmup_steps: "20", seeds: 2, predictions: true}}
models: {{a: x.parquet, b: {{embeddings: store, version: 3, storage_option: AWS_REGION=eu}}}}
probes: [{{preset: MTT, labels: l.csv, grid: "lr=1e-4,steps=10,l2=0"}}]
""")
    assert loaded.output == str(tmp_path) and loaded.models["b"].storage_option == ("AWS_REGION=eu",)
    cell = suite.probe_config(loaded, "b", loaded.probes[0], loaded.models["b"])
    assert (cell.input.embeddings, cell.input.version, cell.warmup_steps, cell.seeds) == ("store", 3, 20, 2)
    assert cell.output == f"{tmp_path}/b/MTT" and cell.dataset == "MTT"
    assert cell.predictions_path == f"{tmp_path}/b/MTT/predictions.parquet"
    # The same cell from the probe's own command line is the same config.
    from musicrep.probes.config import ProbeConfig

    assert ProbeConfig.from_argv(
        ["--embeddings", "store", "--version", "3", "--storage-option", "AWS_REGION=eu", "--labels", "l.csv",
         "--preset", "MTT", "--grid", "lr=1e-4,steps=10,l2=0", "--warmup-steps", "20", "--seeds", "2",
         "--predictions", "--dataset", "MTT", "--output", f"{tmp_path}/b/MTT"]) == cell


def _documented_suites() -> dict[str, str]:
    import pathlib
    import textwrap

    root = pathlib.Path(__file__).resolve().parents[2]
    doc = suite.__doc__
    demo = (root / "scripts" / "demo_probes.sh").read_text()
    return {
        "probes/suite.py": textwrap.dedent(doc[doc.index("    output:"):]),
        "docs/configuration.md": (root / "docs" / "configuration.md").read_text().split("```yaml\n")[1].split("```")[0],
        "scripts/demo_probes.sh": demo.split("<<YAML\n")[1].split("\nYAML")[0].replace("$out", "/tmp/demo"),
    }


@pytest.mark.parametrize("where", sorted(_documented_suites()))
def test_the_documented_suites_are_valid_configs(where):
    loaded = suite.load_suite(_documented_suites()[where])
    cells = [suite.probe_config(loaded, name, probe, source)
             for name, source in loaded.models.items() if not source.each_model for probe in loaded.probes]
    assert len(cells) == len(loaded.probes) * sum(not s.each_model for s in loaded.models.values()) > 0
    assert all(cell.output.startswith(loaded.output + "/") for cell in cells)
