"""The commit protocol (musicrep.pipelines.commit): staged files → final names → manifest
→ clean-up, what readers see, and what a SIGKILL at each point leaves behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from job_outputs import assert_only_committed, committed
from musicrep.errors import ConfigError
from musicrep.contracts.shard_dataset import read_shards
from musicrep.manifest import read_manifest, resolve_files
from musicrep.pipelines import commit
from musicrep.pipelines import features as features_job

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


def _stage(run: commit.StagedRun, rows: int, errors: int, *, total_rows: int | None = None) -> None:
    """What a pipeline leaves in staging: one Parquet file, one dead-letter file, the totals."""
    os.makedirs(run.staging_dir)
    table = pa.table({"track_id": [f"t{i}" for i in range(rows)]})
    pq.write_table(table, os.path.join(run.staging_dir, "embeddings-00000-of-00001.parquet"))
    with open(os.path.join(run.staging_dir, "errors-00000-of-00001.jsonl"), "w") as handle:
        handle.writelines(json.dumps({"track_id": f"e{i}"}) + "\n" for i in range(errors))
    for name, value in (("embeddings", rows if total_rows is None else total_rows), ("errors", errors)):
        with open(os.path.join(run.staging_dir, f"_total-{name}.txt"), "w") as handle:
            handle.write(f"{value}\n")
    os.makedirs(os.path.join(run.staging_dir, "beam-temp-embeddings-x"))


PREFIXES = ("embeddings", "windows", "errors")


def test_commit_moves_staged_files_to_run_named_files_and_removes_the_previous_run(tmp_path):
    out = str(tmp_path / "out")
    first = commit.start_run(out)
    _stage(first, rows=3, errors=1)
    manifest = commit.commit(first, job="embed", prefixes=PREFIXES, settings={"x": 1})
    assert manifest == read_manifest(out)
    assert manifest["counts"] == {"embeddings": 3, "errors": 1}
    assert [(f["name"], f["kind"], f["records"]) for f in manifest["files"]] == [
        (f"embeddings-{first.run_id}-00000-of-00001.parquet", "embeddings", 3),
        (f"errors-{first.run_id}-00000-of-00001.jsonl", "errors", 1),
    ]
    assert manifest["settings"] == {"x": 1} and manifest["job"] == "embed"
    assert_only_committed(out)
    # Leftovers of a killed run and of the code before staging: all removed by the next commit.
    (tmp_path / "out" / "windows-00000-of-00001.parquet").write_bytes(b"old")
    (tmp_path / "out" / "beam-temp-errors-123").mkdir()
    (tmp_path / "out" / "_staging" / "19990101T000000Z-dead00").mkdir(parents=True)
    second = commit.start_run(out)
    _stage(second, rows=2, errors=0)
    manifest = commit.commit(second, job="embed", prefixes=PREFIXES, settings={})
    assert_only_committed(out)
    assert [f["name"].split("-")[1] for f in manifest["files"]] == [second.run_id.split("-")[0]] * 2
    assert manifest["counts"] == {"embeddings": 2, "errors": 0}


def test_a_commit_whose_files_disagree_with_the_runs_totals_changes_nothing(tmp_path):
    out = str(tmp_path / "out")
    first = commit.start_run(out)
    _stage(first, rows=3, errors=0)
    before = commit.commit(first, job="embed", prefixes=PREFIXES, settings={})
    bad = commit.start_run(out)
    _stage(bad, rows=2, errors=0, total_rows=5)
    with pytest.raises(commit.CommitError, match="counted 5 embeddings records but its files hold 2"):
        commit.commit(bad, job="embed", prefixes=PREFIXES, settings={})
    assert read_manifest(out) == before
    assert all(os.path.exists(p) for p in committed(out, "embeddings"))


def test_readers_resolve_a_directory_or_a_glob_through_the_manifest(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    run = commit.start_run(out)
    _stage(run, rows=1, errors=0)
    commit.commit(run, job="embed", prefixes=PREFIXES, settings={})
    (listed,) = committed(out, "embeddings")
    # A later run killed in the middle of its commit left a renamed file behind.
    (tmp_path / "out" / "embeddings-20990101T000000Z-aaaaaa-00000-of-00001.parquet").write_bytes(b"partial")
    assert resolve_files(out, kind="embeddings") == [listed]
    assert resolve_files(f"{out}/embeddings-*.parquet", kind="embeddings") == [listed]
    monkeypatch.chdir(tmp_path)  # a relative glob reads the same committed file
    assert resolve_files("out/embeddings-*.parquet", kind="embeddings") == [listed]
    # Directories never committed are read by their glob as before.
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.parquet").write_bytes(b"")
    assert resolve_files(f"{tmp_path}/plain/*.parquet", kind="embeddings") == [str(tmp_path / "plain" / "x.parquet")]
    with pytest.raises(ConfigError, match="no file matches"):
        resolve_files(f"{out}/windows-*", kind="windows")
    with pytest.raises(ConfigError, match="lists no windows files"):
        resolve_files(out, kind="windows")


# --- SIGKILL at every point of a run -------------------------------------------------


def _start_job(catalog, out: str, pause_at: str, beam_args: list[str], log_path) -> subprocess.Popen:
    env = {**os.environ, commit.PAUSE_ENV: pause_at, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "musicrep.cli", "features", "--input", f"{catalog}/*", "--output", out, *beam_args]
    log = open(log_path, "w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _paused_pid(process: subprocess.Popen, log_path, point: str, timeout_s: float = 300) -> int:
    """The pid the pause hook printed once the job reached `point`."""
    marker = f"paused at {point}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in open(log_path, encoding="utf-8", errors="replace"):
            if marker in line:
                return int(line.split(" pid ", 1)[1].split()[0])
        if process.poll() is not None:
            pytest.fail(f"job exited {process.returncode} before {point}:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail(f"job did not reach {point} in {timeout_s} s")


def _kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)


def _shard_tracks(out: str) -> list[bytes]:
    return sorted(element["track_id"].numpy() for element in read_shards(out))


def _assert_committed_set_is_readable(out: str, manifest: dict) -> None:
    assert read_manifest(out) == manifest
    for entry in manifest["files"]:
        assert os.path.getsize(os.path.join(out, entry["name"])) == entry["size_bytes"]
    assert _shard_tracks(out) == [b"a", b"b"]


@pytest.mark.slow
def test_a_job_killed_at_any_point_leaves_a_complete_readable_output(mixed_catalog, tmp_path):
    out = str(tmp_path / "out")
    features_job.run(["--input", f"{mixed_catalog}/*", "--output", out, "--shards", "2", *IN_MEMORY])
    previous = read_manifest(out)
    for point in ("track:b", "before_commit", "mid_commit", "before_cleanup"):
        log_path = tmp_path / f"{point.replace(':', '_')}.log"
        process = _start_job(mixed_catalog, out, point, ["--shards", "2", *IN_MEMORY], log_path)
        _paused_pid(process, log_path, point)
        _kill_group(process)
        if point == "before_cleanup":
            # The switch happened: readers see the new run, whole, and only it.
            manifest = read_manifest(out)
            assert manifest["run_id"] != previous["run_id"]
            _assert_committed_set_is_readable(out, manifest)
            previous = manifest
        else:
            _assert_committed_set_is_readable(out, previous)
        assert os.listdir(os.path.join(out, "_staging"))  # the killed run's leftovers
    features_job.run(["--input", f"{mixed_catalog}/*", "--output", out, "--shards", "1", *IN_MEMORY])
    manifest = assert_only_committed(out)
    assert manifest["counts"] == {"features": 2, "errors": 1}
    assert _shard_tracks(out) == [b"a", b"b"]


@pytest.mark.slow
def test_a_killed_worker_leaves_the_previous_output_and_the_next_run_cleans_up(mixed_catalog, tmp_path):
    out = str(tmp_path / "out")
    features_job.run(["--input", f"{mixed_catalog}/*", "--output", out, *IN_MEMORY])
    previous = read_manifest(out)
    log_path = tmp_path / "worker.log"
    workers = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    process = _start_job(mixed_catalog, out, "track:b", workers, log_path)
    worker = _paused_pid(process, log_path, "track:b")
    assert worker != process.pid  # the hook ran in a worker process, not the launcher
    os.kill(worker, signal.SIGKILL)
    # The runner notices the lost worker ("Channel closed prematurely") and the job fails.
    assert process.wait(timeout=120) != 0
    if _group_alive(process.pid):
        _kill_group(process)  # the other worker
    _assert_committed_set_is_readable(out, previous)
    features_job.run(["--input", f"{mixed_catalog}/*", "--output", out, *IN_MEMORY])
    assert assert_only_committed(out)["counts"] == {"features": 2, "errors": 1}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
