"""`musicrep probe` and `musicrep probe-suite` end to end on temporary files."""
import json

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
    code = musicrep_cli.main(["probe", "--embeddings", embeddings, "--labels", labels,
                              "--task", "multiclass", "--label-column", "instrument",
                              "--seeds", "2", "--output", str(out), "--predictions", *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Acc" in printed and str(out) in printed
    report = json.loads((out / "report.json").read_text())
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
    assert musicrep_cli.main(["probe", "--embeddings", str(tmp_path / "other.parquet"), "--labels", labels,
                              "--task", "multiclass", "--label-column", "instrument", "--seeds", "1",
                              "--output", str(out), "--grid", "lr=3e-3,steps=200,l2=0",
                              "--warmup-steps", "20", "--bootstrap", "0"]) == 0
    assert "model unknown" in capsys.readouterr().out
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
    assert cli.run(["--embeddings", embeddings, "--labels", labels, "--preset", "GS_Key",
                    "--seeds", "1", "--descending-fifths", "--output", str(out),
                    "--grid", "lr=3e-3,steps=300,l2=0", "--warmup-steps", "30",
                    "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
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
    assert cli.run(argv + ["--allow-missing"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
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
    assert suite.run(["--config", str(config)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
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
    assert suite.run(["--config", str(config)]) == 0
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
