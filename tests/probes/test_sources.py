"""`probe --embeddings` takes every kind of output the project writes: a reembed store
(latest, by version, by time), an embed output directory (manifest), a glob, one Parquet."""
import datetime
import functools
import json
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from store_support import IN_MEMORY, write_objects
from musicrep import cli as musicrep_cli
from musicrep.errors import ConfigError
from musicrep.pipelines import commit as run_commit
from musicrep.pipelines import reembed
from musicrep.probes.data import list_model_ids, read_embeddings
from musicrep.store import table as store_table
from musicrep.pipelines.synthetic import SyntheticEmbedding, synthetic_embedding, write_synthetic_export

FAST = ["--grid", "lr=3e-3,steps=40,l2=0", "--warmup-steps", "5", "--bootstrap", "20", "--seeds", "1"]
SIZE = 8


def _reembed(catalog, store: str, model: str) -> None:
    argv = ["--catalog", f"{catalog}/*.bin", "--model", model, "--store", store, *IN_MEMORY]
    result = reembed.run(argv, make_compute=functools.partial(SyntheticEmbedding))
    assert result.tracks_failed == 0 and result.table_version is not None


@pytest.fixture
def rewritten_store(tmp_path, monkeypatch):
    """A store at version 2: version 1 embedded t00..t29; run 2 saw t00..t03 deleted and
    t10 overwritten, so it removed 4 rows and rewrote the files that held them.
    Returns (store, catalog, moment between the two commits)."""
    monkeypatch.setattr(store_table, "ROWS_PER_FILE", 10)
    model = str(tmp_path / "model")
    write_synthetic_export(model, model_id="synthetic-a", embedding_size=SIZE)
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    write_objects(catalog, [f"t{i:02d}" for i in range(30)])
    _reembed(catalog, store, model)
    time.sleep(0.05)
    between = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(0.05)
    for i in range(4):
        os.remove(catalog / f"t{i:02d}.bin")
    write_objects(catalog, ["t10"], salt="new bytes")
    _reembed(catalog, store, model)
    return store, catalog, between


def _by_id(embeddings) -> dict[str, np.ndarray]:
    return dict(zip(embeddings.track_ids, embeddings.vectors))


def test_a_store_is_read_through_its_log_at_any_version(rewritten_store):
    store, _, between = rewritten_store
    delta = DeltaTable(store)
    assert delta.version() == 2
    latest = read_embeddings(store)
    expected = delta.to_pandas().set_index("track_id")
    assert sorted(latest.track_ids) == sorted(expected.index) == [f"t{i:02d}" for i in range(4, 30)]
    for track_id, vector in _by_id(latest).items():
        np.testing.assert_array_equal(vector, synthetic_embedding(expected.loc[track_id, "content_sha256"], SIZE))
    # data/ still holds the superseded files: a glob over it is refused.
    with pytest.raises(ConfigError, match=f"is a data file of the store {store}: give --embeddings {store} "):
        read_embeddings(f"{store}/data/*/*.parquet")
    source = latest.source
    assert (source.kind, source.path, source.version, source.model_ids) == ("delta", store, 2, ("synthetic-a",))
    assert source.files == len(store_table.data_files(delta))
    committed = {e["version"]: e["timestamp"] for e in delta.history()}

    def iso(ms: int) -> str:
        return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")

    assert source.version_timestamp == iso(committed[2])

    first = read_embeddings(store, version=1)
    assert first.source.version == 1 and len(first.track_ids) == 30
    assert first.source.version_timestamp == iso(committed[1])
    old = DeltaTable(store, version=1).to_pandas().set_index("track_id")
    np.testing.assert_array_equal(_by_id(first)["t10"], np.asarray(old.loc["t10", "embedding"], np.float32))
    assert not np.array_equal(_by_id(first)["t10"], _by_id(latest)["t10"])  # overwritten in run 2
    assert read_embeddings(store, as_of=between.isoformat()).source.version == 1
    naive = between.astimezone(datetime.timezone.utc).replace(tzinfo=None).isoformat()
    assert read_embeddings(store, as_of=naive).source.version == 1  # no zone: UTC
    assert read_embeddings(store, as_of=datetime.datetime.now(datetime.timezone.utc).isoformat()).source.version == 2

    with pytest.raises(ConfigError, match=r"has versions 0\.\.2; no version 7"):
        read_embeddings(store, version=7)
    with pytest.raises(ConfigError, match="no version committed at or before 2001"):
        read_embeddings(store, as_of="2001-01-01T00:00:00Z")
    with pytest.raises(ConfigError, match="is not an ISO 8601 time"):
        read_embeddings(store, as_of="yesterday")


def test_probe_cli_on_a_store_records_path_version_and_models(rewritten_store, tmp_path, capsys):
    store, _, _ = rewritten_store
    ids = [f"t{i:02d}" for i in range(30)]
    splits = ["train"] * 18 + ["valid"] * 6 + ["test"] * 6
    pd.DataFrame({"track_id": ids, "split": splits, "label": ["x", "y"] * 15}).to_csv(tmp_path / "l.csv", index=False)
    out = tmp_path / "probe"
    argv = ["probe", "--embeddings", store, "--labels", str(tmp_path / "l.csv"), "--task", "multiclass",
            "--output", str(out), *FAST]
    assert musicrep_cli.main(argv + ["--allow-missing"]) == 0
    assert f"open {out}/report.html" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    source = report["inputs"]["embeddings"]
    assert {k: source[k] for k in ("kind", "path", "version", "model_ids")} == {
        "kind": "delta", "path": store, "version": 2, "model_ids": ["synthetic-a"]}
    assert report["tracks"]["left_out"]["labelled_without_embedding"]["count"] == 4  # t00..t03 deleted
    assert "table version 2" in (out / "report.md").read_text()
    assert (out / "report.html").exists()

    assert musicrep_cli.main(argv + ["--version", "1", "--output", str(tmp_path / "v1")]) == 0
    assert json.loads((tmp_path / "v1" / "report.json").read_text())["inputs"]["embeddings"]["version"] == 1
    capsys.readouterr()
    assert musicrep_cli.main(argv + ["--version", "1", "--embeddings", str(tmp_path / "l.csv")]) == 2
    assert "not a store (Delta table)" in capsys.readouterr().err


def test_the_directory_that_holds_the_store_is_refused_clearly(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="is a directory but neither a store .* nor a committed embed output"):
        read_embeddings(str(tmp_path / "plain"))


def test_an_embed_output_directory_is_read_through_its_manifest(tmp_path, rng, embedding_writer):
    write_embeddings, _ = embedding_writer
    out = str(tmp_path / "embeddings")
    run = run_commit.start_run(out)
    vectors = rng.standard_normal((6, 4)).astype(np.float32)
    write_embeddings(tmp_path / run.staging_dir, [f"k{i}" for i in range(6)], vectors, shards=2)
    run_commit.commit(run, job="embed", prefixes=("embeddings",), settings={})
    # A killed later run left a file the manifest does not list.
    write_embeddings(tmp_path / "stray", ["k9"], vectors[:1], shards=1)
    os.rename(tmp_path / "stray" / "embeddings-00000-of-00001.parquet", f"{out}/embeddings-zz-00000-of-00001.parquet")

    for spec, kind in ((out, "manifest"), (out + "/", "manifest"), (f"{out}/embeddings-*.parquet", "glob")):
        embeddings = read_embeddings(spec)
        assert sorted(embeddings.track_ids) == [f"k{i}" for i in range(6)], spec
        assert (embeddings.source.kind, embeddings.source.files, embeddings.source.version) == (kind, 2, None)
        np.testing.assert_array_equal(_by_id(embeddings)["k3"], vectors[3])
    single = sorted(p for p in os.listdir(out) if p.endswith(".parquet") and "-zz-" not in p)[0]
    one = read_embeddings(f"{out}/{single}")
    assert one.source.kind == "parquet" and len(one.track_ids) == 3


def _two_model_store(path: str, rng) -> dict[str, np.ndarray]:
    vectors = rng.standard_normal((8, 4)).astype(np.float32)
    write_deltalake(path, pa.table({
        "track_id": [f"m{i}" for i in range(8)],
        "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        "model_id": ["model-one"] * 5 + ["model-two"] * 3}))
    return dict(zip([f"m{i}" for i in range(8)], vectors))


def test_several_models_are_refused_by_name_or_selected(tmp_path, rng):
    store = str(tmp_path / "mixed")
    expected = _two_model_store(store, rng)
    with pytest.raises(ConfigError, match=r"holds embeddings of 2 models \('model-one', 'model-two'\); "
                                          "pick one with --model-id or probe each with --each-model"):
        read_embeddings(store)
    assert list_model_ids(store) == ["model-one", "model-two"]
    two = read_embeddings(store, model_id="model-two")
    assert sorted(two.track_ids) == ["m5", "m6", "m7"] and two.model_id == "model-two"
    assert two.source.model_ids == ("model-one", "model-two") and two.source.selected_model_id == "model-two"
    np.testing.assert_array_equal(_by_id(two)["m6"], expected["m6"])
    with pytest.raises(ConfigError, match="no embeddings of model 'model-three'"):
        read_embeddings(store, model_id="model-three")


def test_each_model_writes_one_report_per_model_id(tmp_path, rng, capsys):
    ids = [f"m{i:03d}" for i in range(120)]
    classes = rng.integers(0, 2, 120)
    centres = 4.0 * rng.standard_normal((2, 6))
    vectors = (centres[classes] + rng.standard_normal((120, 6))).astype(np.float32)
    store = str(tmp_path / "mixed")
    frame = pa.table({"track_id": ids + ids, "embedding": pa.array(list(vectors) + list(-vectors), pa.list_(pa.float32())),
                      "model_id": ["alpha"] * 120 + ["beta"] * 120})
    # The same track under two models: each model's rows hold every track once.
    write_deltalake(store, frame)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"track_id": ids, "split": (["train"] * 3 + ["valid", "test"]) * 24,
                  "label": [f"c{c}" for c in classes]}).to_csv(labels, index=False)
    out = tmp_path / "each"
    argv = ["probe", "--embeddings", store, "--labels", str(labels), "--task", "multiclass", "--output", str(out), *FAST]
    assert musicrep_cli.main(argv) == 2
    assert "2 models ('alpha', 'beta')" in capsys.readouterr().err
    assert musicrep_cli.main(argv + ["--each-model"]) == 0
    for model in ("alpha", "beta"):
        report = json.loads((out / model / "report.json").read_text())
        assert report["embedding"]["model_id"] == model
        assert report["inputs"]["embeddings"]["selected_model_id"] == model
        assert report["tracks"]["test"] == 24 and report["metrics"]["accuracy"]["mean"] > 0.9
    # The suite: a model entry with each_model becomes one column per model id; another
    # entry picks one model id of the same store.
    config = tmp_path / "suite.yaml"
    config.write_text(f"""
output: {tmp_path / 'suite'}
defaults: {{seeds: 1, grid: "lr=3e-3,steps=40,l2=0", warmup_steps: 5, bootstrap: 20}}
models:
  store: {{embeddings: "{store}", each_model: true}}
  only-beta: {{embeddings: "{store}", model_id: beta}}
probes: [{{dataset: Classes, task: multiclass, labels: "{labels}"}}]
""")
    capsys.readouterr()
    assert musicrep_cli.main(["probe-suite", "--config", str(config)]) == 0
    compared = json.loads((tmp_path / "suite" / "suite.json").read_text())
    assert sorted(compared) == ["only-beta", "store/alpha", "store/beta"]
    for name, model in (("store_alpha", "alpha"), ("store_beta", "beta"), ("only-beta", "beta")):
        report = json.loads((tmp_path / "suite" / name / "Classes" / "report.json").read_text())
        assert report["embedding"]["model_id"] == model
    assert compared["store/beta"]["Classes/accuracy"]["mean"] == compared["only-beta"]["Classes/accuracy"]["mean"]
    page = (tmp_path / "suite" / "suite.html").read_text()
    assert "<th>store/alpha</th><th>store/beta</th><th>only-beta</th>" in page
