"""Scheduled re-embedding into the Delta store: only what changed is read, one commit per run."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from audio_files import tone, write_audio
from musicrep.cli import main
from musicrep.pipelines import reembed
from musicrep.store import table

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


def rows(store: str, version: int | None = None) -> pd.DataFrame:
    return DeltaTable(store, version=version).to_pandas().set_index("track_id").sort_index()


def committed_files(store: str) -> set[str]:
    return set(table.data_files(DeltaTable(store)))


def last_run(store: str) -> dict:
    return table.runs(DeltaTable(store), 1)[0]["run"]


def test_only_changes_are_read_and_committed_in_one_transaction(tmp_path, tiny_model_uri, capsys):
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    catalog.mkdir()
    for i, freq in enumerate((220.0, 330.0, 440.0)):
        write_audio(str(catalog / f"t{i}.flac"), tone(freq, 5.0, 44100), 44100)
    args = ["--catalog", f"{catalog}/*.flac", "--model", tiny_model_uri, "--store", store, *IN_MEMORY]

    result = reembed.run(args)
    first = rows(store)
    assert (result.job, result.tracks_in, result.tracks_out, result.tracks_failed, result.table_version) == ("reembed", 3, 3, 0, 1)
    assert sorted(first.index) == ["t0", "t1", "t2"]
    assert DeltaTable(store).version() == 1  # 0: create, 1: the run
    run = last_run(store)
    assert (run["plan"]["new"], run["tracks_embedded"], run["rows_removed"], run["files_removed"]) == (3, 3, 0, 0)
    for track_id in first.index:
        stat = os.stat(catalog / f"{track_id}.flac")
        assert first.loc[track_id, "source_size_bytes"] == stat.st_size
        assert first.loc[track_id, "source_mtime_s"] == stat.st_mtime
    assert first["source_generation"].isna().all()  # no generations on a local disk
    assert (first["window_s"] == 3.0).all() and (first["hop_s"] == 2.0).all()

    result = reembed.run(args)  # nothing changed: nothing read, no commit
    assert DeltaTable(store).version() == 1
    assert (result.run_id, result.tracks_in, result.table_version) == (None, 0, 1)
    assert "all unchanged: nothing read, nothing committed (store version 1)" in result.summary()

    write_audio(str(catalog / "t1.flac"), tone(370.0, 5.0, 44100), 44100)  # new bytes
    os.remove(catalog / "t2.flac")
    shutil.copy(catalog / "t0.flac", catalog / "t3.flac")
    os.utime(catalog / "t0.flac", (1_700_000_000, 1_700_000_000))  # same bytes, new mtime
    result = reembed.run(args)
    assert DeltaTable(store).version() == 2  # one commit for adds, rewrites and removals
    after = rows(store)
    assert sorted(after.index) == ["t0", "t1", "t3"]
    run = last_run(store)
    assert {k: run["plan"][k] for k in ("new", "changed", "deleted", "unchanged")} == {
        "new": 1, "changed": 2, "deleted": 1, "unchanged": 0,
    }
    assert (run["tracks_embedded"], run["tracks_content_unchanged"]) == (2, 1)  # t1, t3; t0 hashed only
    assert (run["rows_removed"], run["rows_rewritten"]) == (2, 1)  # t1's old row, t2; t0 rewritten
    assert after.loc["t0", "created_at"] == first.loc["t0", "created_at"]  # embedding kept
    np.testing.assert_array_equal(after.loc["t0", "embedding"], first.loc["t0", "embedding"])
    assert after.loc["t0", "source_mtime_s"] == 1_700_000_000  # with the listing's metadata
    assert after.loc["t1", "content_sha256"] != first.loc["t1", "content_sha256"]
    np.testing.assert_allclose(after.loc["t3", "embedding"], first.loc["t0", "embedding"], atol=1e-6)
    assert sorted(rows(store, version=1).index) == ["t0", "t1", "t2"]  # time travel: the old snapshot
    out = result.summary()
    assert (result.tracks_in, result.tracks_out, result.table_version) == (3, 2, 2)
    assert result.counts["tracks_content_unchanged"] == 1 and result.counts["rows_rewritten"] == 1
    assert "3 tracks listed: 1 new, 2 changed, 0 stale, 1 deleted, 0 unchanged" in out
    assert "committed store version 2" in out
    assert not os.listdir(os.path.join(store, "_staging"))

    reembed.run([*args, "--hop-s", "1.0"])  # another window setting: every row is stale
    run = last_run(store)
    assert (run["plan"]["stale"], run["tracks_embedded"], run["rows_removed"]) == (3, 3, 3)
    final = rows(store)
    assert (final["hop_s"] == 1.0).all() and sorted(final.index) == ["t0", "t1", "t3"]
    assert (final["n_windows"] > after["n_windows"]).all()  # 5 s: 2 windows at 2 s hop, 3 at 1 s


def _reembed_process(args: list[str], **env: str) -> subprocess.Popen:
    """`musicrep reembed` in its own process group (so a kill reaches its workers too)."""
    return subprocess.Popen(
        [sys.executable, "-m", "musicrep.cli", "reembed", *args],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _data_files_on_disk(store: str) -> set[str]:
    return {os.path.relpath(p, store) for p in glob.glob(f"{store}/data/**/*.parquet", recursive=True)}


@pytest.mark.slow
def test_a_run_killed_during_the_writes_or_before_the_commit_leaves_the_table_whole(tmp_path, tiny_model_uri):
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    catalog.mkdir()
    for i, freq in enumerate((220.0, 330.0)):
        write_audio(str(catalog / f"t{i}.flac"), tone(freq, 5.0, 44100), 44100)
    args = ["--catalog", f"{catalog}/*.flac", "--model", tiny_model_uri, "--store", store, *IN_MEMORY]
    reembed.run(args)
    before = rows(store)
    write_audio(str(catalog / "t1.flac"), tone(370.0, 5.0, 44100), 44100)
    write_audio(str(catalog / "t2.flac"), tone(550.0, 5.0, 44100), 44100)

    paused = _reembed_process(args, MUSICREP_TEST_PAUSE_AT="before_commit")
    for line in paused.stderr:  # the pipeline ran; the launcher waits just before committing
        if "paused at before_commit" in line:
            break
    leftovers = _data_files_on_disk(store) - committed_files(store)
    assert leftovers  # the killed run's data files exist, but no commit names them
    _kill(paused)
    assert DeltaTable(store).version() == 1
    pd.testing.assert_frame_equal(rows(store), before)

    # The pause only guarantees the kill lands before the commit if the writes are quick.
    seen = len(_data_files_on_disk(store))
    writing = _reembed_process(args, MUSICREP_TEST_PAUSE_AT="before_commit")
    deadline = time.monotonic() + 300
    while len(_data_files_on_disk(store)) == seen:  # until this run's first data file lands
        assert writing.poll() is None and time.monotonic() < deadline, "the run ended before its writes were seen"
        time.sleep(0.02)
    _kill(writing)  # during the writes
    assert DeltaTable(store).version() == 1
    pd.testing.assert_frame_equal(rows(store), before)

    reembed.run(args)  # the next run completes
    after = rows(store)
    assert DeltaTable(store).version() == 2 and sorted(after.index) == ["t0", "t1", "t2"]
    assert after.loc["t0", "created_at"] == before.loc["t0", "created_at"]
    assert main(["store", "vacuum", store, "--retention-hours", "0"]) == 0
    assert _data_files_on_disk(store) == committed_files(store)  # the killed runs' files are gone
    assert not glob.glob(f"{store}/_staging/*/*")


def test_reembed_on_prism_equals_the_default_runner(tmp_path, tiny_model_uri):
    from prism_support import find_or_build_prism, prism_args

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    for i, freq in enumerate((220.0, 330.0)):
        write_audio(str(catalog / f"t{i}.flac"), tone(freq, 5.0, 44100), 44100)
    base = ["--catalog", f"{catalog}/*.flac", "--model", tiny_model_uri]
    reembed.run([*base, "--store", str(tmp_path / "default"), *IN_MEMORY])
    reembed.run([*base, "--store", str(tmp_path / "prism"), *prism_args(find_or_build_prism())])
    expected, actual = rows(str(tmp_path / "default")), rows(str(tmp_path / "prism"))
    columns = [c for c in expected.columns if c not in ("created_at", "embedding")]
    pd.testing.assert_frame_equal(actual[columns], expected[columns])
    np.testing.assert_allclose(np.stack(actual["embedding"]), np.stack(expected["embedding"]), rtol=0, atol=1e-6)
    assert last_run(str(tmp_path / "prism"))["tracks_embedded"] == 2
