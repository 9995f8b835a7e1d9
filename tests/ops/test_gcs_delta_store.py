"""The reembed store as a Delta table on gs://: delta-rs commits against an emulator.

delta-rs reaches GCS through object_store's XML-API client. Here it talks to
fake-gcs-server (built from the Go module proxy, like Prism) through `gcs_xml_shim`, which
bridges the emulator's XML gaps (see its docstring); Beam's GCS filesystem (JSON API) talks
to the same fake-gcs-server directly. The service-account file that points delta-rs at the
shim holds `gcs_base_url` and `disable_oauth` (storage option `google_service_account`).
Without `go` and without a built fake-gcs-server the tests skip (fixture `fake_gcs`,
tests/ops/conftest.py).
"""
from __future__ import annotations

import pytest
from deltalake import DeltaTable

from gcs_xml_shim import FAKE_GCS_BUCKET
from musicrep.cli import main
from musicrep.pipelines import commit as run_commit
from musicrep.pipelines import reembed
from musicrep.store import table
from musicrep.pipelines.synthetic import SyntheticEmbedding, write_synthetic_export
from store_support import IN_MEMORY, object_bytes, sha256_of


@pytest.fixture(scope="module")
def delta_gcs(fake_gcs):
    """(storage options for delta-rs, gs:// URL maker); Beam's gs:// goes to the same server."""
    return {"google_service_account": fake_gcs.service_account}, lambda path: f"gs://{FAKE_GCS_BUCKET}/{path}"


def _upload(path: str, data: bytes) -> None:
    from google.cloud import storage

    storage.Client().bucket(FAKE_GCS_BUCKET).blob(path).upload_from_string(data)


def test_reembed_commits_a_delta_table_on_gs(delta_gcs, tmp_path, monkeypatch, capsys):
    options, url = delta_gcs
    for name in ("a", "b", "c"):
        _upload(f"catalog/{name}.bin", object_bytes(name))
    model, store = str(tmp_path / "model"), url("store")
    write_synthetic_export(model, model_id="synthetic-gcs", embedding_size=8)
    option_args = [f"--storage-option=google_service_account={options['google_service_account']}"]
    argv = ["--catalog", url("catalog/**"), "--model", model, "--store", store, *option_args, *IN_MEMORY]

    def run() -> None:
        reembed.run(argv, make_compute=SyntheticEmbedding)

    def snapshot(version=None):
        return DeltaTable(store, version=version, storage_options=options).to_pandas().set_index("track_id").sort_index()

    run()
    first = snapshot()
    assert sorted(first.index) == ["a", "b", "c"] and first["source_generation"].notna().all()
    run()
    assert DeltaTable(store, storage_options=options).version() == 1  # nothing changed: no commit

    _upload("catalog/b.bin", object_bytes("b", "v2"))
    from google.cloud import storage

    storage.Client().bucket(FAKE_GCS_BUCKET).blob("catalog/c.bin").delete()
    run()
    after = snapshot()
    assert sorted(after.index) == ["a", "b"] and after.loc["b", "content_sha256"] == sha256_of(object_bytes("b", "v2"))
    assert sorted(snapshot(version=1).index) == ["a", "b", "c"]
    last = table.runs(DeltaTable(store, storage_options=options), 1)[0]["run"]
    assert (last["plan"]["changed"], last["plan"]["deleted"], last["rows_removed"]) == (1, 1, 2)

    _upload("catalog/d.bin", object_bytes("d"))

    def another_run_lands_first(point: str) -> None:
        if point == "before_commit":
            monkeypatch.setattr(run_commit, "pause_at", lambda point: None)
            run()

    monkeypatch.setattr(run_commit, "pause_at", another_run_lands_first)
    with pytest.raises(table.ConcurrentRunError, match="run reembed again"):
        run()
    monkeypatch.undo()
    assert sorted(snapshot().index) == ["a", "b", "d"]  # the other run's commit, once

    assert main(["store", "compact", store, *option_args]) == 0
    assert main(["store", "vacuum", store, "--retention-hours", "0", *option_args]) == 0
    capsys.readouterr()
    assert main(["store", "history", store, "--limit", "3", *option_args]) == 0
    assert "VACUUM END" in capsys.readouterr().out
    assert sorted(snapshot().index) == ["a", "b", "d"]
