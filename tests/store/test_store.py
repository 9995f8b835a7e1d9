"""The store end to end with the model-free compute step: copy-on-write deletes, concurrent
runs, maintenance commands and the import of the previous format."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from store_support import EMBEDDING_SIZE, object_bytes, sha256_of, write_objects
from musicrep.cli import main
from musicrep.pipelines import commit as run_commit
from musicrep.store import table
from musicrep.pipelines.synthetic import synthetic_embedding


def snapshot(store: str, version: int | None = None) -> pd.DataFrame:
    return DeltaTable(store, version=version).to_pandas().set_index("track_id").sort_index()


def last_run(store: str) -> dict:
    return table.runs(DeltaTable(store), 1)[0]["run"]


def test_deletes_rewrite_only_the_files_holding_removed_rows(tmp_path, run_store, monkeypatch):
    monkeypatch.setattr(table, "ROWS_PER_FILE", 100)
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    names = [f"o{i:04d}" for i in range(1000)]
    write_objects(catalog, names)
    run_store(catalog, store)
    first = snapshot(store)
    assert len(first) == 1000 and len(DeltaTable(store).file_uris()) == 10  # 1000 rows / 100 per file
    expected = synthetic_embedding(first.loc["o0042", "content_sha256"], EMBEDDING_SIZE)
    np.testing.assert_array_equal(first.loc["o0042", "embedding"], expected)

    files = table.read_index(DeltaTable(store)).to_pandas().set_index("track_id")[table.DATA_FILE]
    gone = [name for name in names if files[name] == files["o0000"]][:3]  # three rows of one file
    for name in gone:
        os.remove(catalog / f"{name}.bin")
    run_store(catalog, store)
    run = last_run(store)
    rows_in_file = int((files == files["o0000"]).sum())
    assert (run["plan"]["deleted"], run["tracks_embedded"], run["files_removed"]) == (3, 0, 1)
    assert (run["rows_removed"], run["rows_rewritten"]) == (3, rows_in_file - 3)
    after = snapshot(store)
    assert sorted(after.index) == sorted(set(names) - set(gone))
    pd.testing.assert_frame_equal(after, first.drop(gone))  # the other rows exactly as they were


@pytest.mark.parametrize("modify", [True, False], ids=["rewrites", "appends_only"])
def test_a_run_that_meets_a_concurrent_commit_commits_nothing(tmp_path, run_store, monkeypatch, capsys, modify):
    """Two runs on one store: the second to commit fails with a clear message, also when
    both only append (Delta lets blind appends pass; the runs' shared txn app id does not)."""
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    write_objects(catalog, ["a", "b"])
    run_store(catalog, store)
    write_objects(catalog, ["c"])
    if modify:
        write_objects(catalog, ["a"], salt="new bytes")

    def another_run_lands_first(point: str) -> None:
        if point == "before_commit":
            monkeypatch.setattr(run_commit, "pause_at", lambda point: None)
            run_store(catalog, store)  # the same work, committed while the first run waits

    monkeypatch.setattr(run_commit, "pause_at", another_run_lands_first)
    with pytest.raises(table.ConcurrentRunError, match="after this run read version 1.*run reembed again"):
        run_store(catalog, store)
    assert DeltaTable(store).version() == 2  # only the other run's commit
    rows = snapshot(store)
    assert sorted(rows.index) == ["a", "b", "c"]  # no track twice, nothing lost
    assert rows.loc["a", "content_sha256"] == sha256_of(object_bytes("a", "new bytes" if modify else ""))
    assert last_run(store)["tracks_embedded"] == (2 if modify else 1)

    assert main(["reembed", "--catalog", f"{catalog}/*.bin", "--model", str(tmp_path / "model"), "--store", store]) == 0
    assert "all unchanged" in capsys.readouterr().out  # the next run finds nothing left to do


@pytest.mark.parametrize("landed", [False, True], ids=["refused", "answer_lost"])
def test_a_storage_error_on_the_commit_is_tried_again_and_commits_once(tmp_path, run_store, monkeypatch, landed):
    """The log write fails once with a storage error (object_store does not retry a put
    whose connection was reset): refused, the commit is tried again; landed with its
    answer lost, the run finds its commit by its token and does not write a second one."""
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    write_objects(catalog, ["a", "b"])
    run_store(catalog, store)
    write_objects(catalog, ["c"])
    monkeypatch.setattr(table, "COMMIT_RETRY_WAIT_S", 0.0)
    original, calls = DeltaTable.create_write_transaction, []

    def fails_once(self, *args, **kwargs):
        calls.append(self.version())
        if len(calls) == 1 and landed:
            original(self, *args, **kwargs)
        if len(calls) == 1:
            raise OSError("Generic GCS error: Connection reset by peer (os error 104)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeltaTable, "create_write_transaction", fails_once)
    result = run_store(catalog, store)
    assert (result.tracks_out, result.table_version) == (1, 2)
    assert calls == ([1] if landed else [1, 1])  # tried again from the version the run read
    assert DeltaTable(store).version() == 2  # one commit
    assert sorted(snapshot(store).index) == ["a", "b", "c"] and last_run(store)["tracks_embedded"] == 1


def test_store_commands_compact_vacuum_and_history(tmp_path, run_store, capsys):
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    for batch in (["a", "b", "c"], ["d"], ["e", "f"]):  # three runs: three small files
        write_objects(catalog, batch)
        run_store(catalog, store)
    before = snapshot(store)
    assert len(DeltaTable(store).file_uris()) == 3
    leftover = tmp_path / "store" / "data" / "killed-run" / "part-00000-of-00001.parquet"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"never committed")

    assert main(["store", "compact", store]) == 0
    assert len(DeltaTable(store).file_uris()) == 1
    pd.testing.assert_frame_equal(snapshot(store), before)  # same rows, fewer files
    assert main(["store", "vacuum", store, "--retention-hours", "0"]) == 0
    assert not leftover.exists()
    assert len(DeltaTable(store).file_uris()) == 1 and len(snapshot(store)) == 6
    capsys.readouterr()
    assert main(["store", "history", store]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines][:3] == ["v6", "v5", "v4"]  # vacuum (end, start), compact
    assert "VACUUM END" in lines[0] and "OPTIMIZE" in lines[2]
    runs = [line for line in lines if " run " in line]
    assert len(runs) == 3 and "2 new" in runs[0] and "3 new" in runs[2]
    assert lines[-1].startswith("v0") and "CREATE TABLE" in lines[-1]


def test_a_store_of_the_previous_format_is_imported_once(tmp_path, run_store, synthetic_model, capsys):
    catalog, store = tmp_path / "catalog", tmp_path / "store"
    write_objects(catalog, ["a", "b"])
    from musicrep.model.export import read_metadata
    from musicrep.contracts import schema

    metadata = read_metadata(synthetic_model)
    old = []
    for name in ("a", "b"):
        sha = sha256_of((catalog / f"{name}.bin").read_bytes())
        old.append({
            "track_id": name, "uri": str(catalog / f"{name}.bin"), "content_sha256": sha, "duration_s": 1.0,
            "n_windows": 1, "window_s": 3.0, "hop_s": 2.0, "embedding": np.full(EMBEDDING_SIZE, 0.5, np.float32),
            "model_id": metadata.model_id, "feature_config_sha256": metadata.feature_config_sha256,
            "created_at": pd.Timestamp("2024-01-01", tz="UTC"),
        })
    (store / "current").mkdir(parents=True)
    old_schema = pa.schema([f for f in schema.embedding_schema(EMBEDDING_SIZE) if f.name in old[0]])
    pq.write_table(pa.Table.from_pylist(old, schema=old_schema), store / "current" / "embeddings-00000-of-00001.parquet")
    (store / "runs.jsonl").write_text(json.dumps({"run_id": "r1", "tracks_embedded": 2}) + "\n")

    with pytest.raises(Exception, match="musicrep store import"):
        run_store(catalog, str(store))
    assert main(["store", "import", str(store)]) == 0
    assert not (store / "current").exists() and not (store / "runs.jsonl").exists()
    imported = snapshot(str(store))
    assert sorted(imported.index) == ["a", "b"] and imported["source_size_bytes"].isna().all()
    assert table.runs(DeltaTable(str(store)), 1)[0]["run"]["previous_runs"] == [{"run_id": "r1", "tracks_embedded": 2}]
    assert main(["store", "import", str(store)]) == 2  # once only

    run_store(catalog, str(store), "--engine", "tf")  # reads each object once: same bytes keep their embeddings
    run = last_run(str(store))
    assert (run["plan"]["changed"], run["tracks_embedded"], run["tracks_content_unchanged"]) == (2, 0, 2)
    rows = snapshot(str(store))
    assert (np.stack(rows["embedding"]) == 0.5).all() and rows["source_size_bytes"].notna().all()


def test_verify_content_finds_changes_that_object_metadata_hides(tmp_path, run_store):
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    write_objects(catalog, ["a", "b"])
    run_store(catalog, store)
    stat = os.stat(catalog / "a.bin")
    (catalog / "a.bin").write_bytes(object_bytes("a").swapcase())  # same size ...
    os.utime(catalog / "a.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and mtime
    run_store(catalog, store)
    assert DeltaTable(store).version() == 1  # the listing cannot see it

    run_store(catalog, store, "--verify-content")
    run = last_run(store)
    assert (run["plan"]["verified"], run["tracks_embedded"], run["tracks_content_unchanged"]) == (2, 1, 1)
    assert (run["rows_removed"], run["rows_rewritten"]) == (1, 1)  # a's old row out, b's row kept as it was
    assert snapshot(store).loc["a", "content_sha256"] == sha256_of(object_bytes("a").swapcase())
    run_store(catalog, store, "--verify-content")  # everything hashes as before: no commit
    assert DeltaTable(store).version() == 2
