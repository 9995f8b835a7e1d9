"""Every job on a real Flink cluster: a JobManager and two TaskManagers (one slot each) on
127.0.0.1, Flink 1.16.3 through Beam 2.50's Flink runner, this SDK (2.77).

Outputs must equal the default runner's: log-mel bytes per track, embeddings within 1e-6,
the same dead letters, the same store rows and versions. The SDK harness runs where
production puts it: in the launcher (LOOPBACK), in a worker pool (EXTERNAL), or started by
each TaskManager (PROCESS). A TaskManager or a harness killed mid-job must end in either
the complete, correct set (after Flink's restart) or the previous committed set, intact.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from deltalake import DeltaTable

from flink_support import PARALLELISM, process_config, start_flink, wait_for
from job_outputs import assert_only_committed, dead_letter_stages, embeddings, log_mels
from musicrep import flink_cluster
from musicrep.manifest import read_manifest
from musicrep.pipelines import embed as embed_job
from musicrep.pipelines import features as features_job
from musicrep.pipelines import reembed
from musicrep.pipelines.commit import PAUSE_ENV, PAUSE_ONCE_ENV
from musicrep.testing import write_synth_catalog
from prism_support import free_port, start_worker_pool, write_process_boot

pytestmark = pytest.mark.flink

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
N_TRACKS = 8
DEAD = [("bad", "decode")]
TIMINGS: dict[str, float] = {}  # printed at the end of the module (pytest -s shows them)


@pytest.fixture(scope="module")
def flink(tmp_path_factory):
    started = start_flink(tmp_path_factory.mktemp("flink"))
    yield started
    flink_cluster.stop(started.cluster.directory)
    print("\nflink timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """Eight 4-second tracks in five formats and one file that is not audio: enough
    tracks that both TaskManagers get some."""
    root = tmp_path_factory.mktemp("catalog")
    write_synth_catalog(str(root), n_tracks=N_TRACKS, seed=3, duration_s=4.0)
    os.remove(root / "labels.csv")
    (root / "bad.mp3").write_text("not audio\n")
    return root


def timed(name: str, function, *args):
    started = time.perf_counter()
    result = function(*args)
    TIMINGS[name] = time.perf_counter() - started
    return result


def features(catalog, out, beam_args, name: str) -> str:
    timed(name, features_job.run, ["--input", f"{catalog}/*", "--output", str(out), "--shards", "2", *beam_args])
    assert_only_committed(str(out))
    return str(out)


def embed(source: list[str], model, out, beam_args, name: str) -> str:
    timed(name, embed_job.run, [*source, "--model", model, "--output", str(out), *beam_args])
    assert_only_committed(str(out))
    return str(out)


@pytest.fixture(scope="module")
def reference(catalog, tiny_model_uri, tmp_path_factory):
    """The default runner's outputs: features, embed --features, embed --audio."""
    out = tmp_path_factory.mktemp("reference")
    shards = features(catalog, out / "features", IN_MEMORY, "features default")
    from_shards = embed(["--features", shards], tiny_model_uri, out / "embed", IN_MEMORY, "embed default")
    from_audio = embed(["--audio", f"{catalog}/*"], tiny_model_uri, out / "audio", IN_MEMORY, "embed --audio default")
    result = {"log_mels": log_mels(shards), "dead": dead_letter_stages(shards),
              "embeddings": embeddings(from_shards), "audio": embeddings(from_audio),
              "audio_dead": dead_letter_stages(from_audio)}
    assert len(result["log_mels"]) == N_TRACKS and result["dead"] == DEAD
    assert sorted(result["embeddings"]) == sorted(result["log_mels"]) == sorted(result["audio"])
    return result


def assert_same_features(shards: str, reference) -> None:
    assert dead_letter_stages(shards) == reference["dead"]
    got = log_mels(shards)
    assert sorted(got) == sorted(reference["log_mels"])
    assert all(got[track] == reference["log_mels"][track] for track in got)  # byte for byte


def assert_same_embeddings(output: str, expected: dict) -> None:
    got = embeddings(output)
    assert sorted(got) == sorted(expected)
    for track, vector in got.items():
        np.testing.assert_allclose(vector, expected[track], atol=1e-6, rtol=0)


def assert_both_taskmanagers_worked(flink, vertex_pattern: str) -> dict[str, int]:
    job = flink.jobs()[0]
    assert job["state"] == "FINISHED"
    per_taskmanager = flink.records_per_taskmanager(job["jid"], vertex_pattern)
    assert len(per_taskmanager) == PARALLELISM and all(count > 0 for count in per_taskmanager.values()), per_taskmanager
    return per_taskmanager


def test_features_embed_and_embed_audio_on_two_taskmanagers(flink, catalog, tiny_model_uri, reference, tmp_path):
    shards = features(catalog, tmp_path / "features", flink.args(), "features flink loopback")
    assert_same_features(shards, reference)
    per_taskmanager = assert_both_taskmanagers_worked(flink, r"ExtractLogMel")
    assert sum(per_taskmanager.values()) >= N_TRACKS + 1  # every listed input was decoded once

    out = embed(["--features", shards], tiny_model_uri, tmp_path / "embed", flink.args(), "embed flink loopback")
    assert_same_embeddings(out, reference["embeddings"])
    assert_both_taskmanagers_worked(flink, r"RunInference|Embed")

    out = embed(["--audio", f"{catalog}/*"], tiny_model_uri, tmp_path / "audio", flink.args(), "embed --audio flink loopback")
    assert_same_embeddings(out, reference["audio"])
    assert dead_letter_stages(out) == reference["audio_dead"]


def test_reembed_on_flink_gives_the_default_runners_store(flink, tiny_model_uri, tmp_path):
    """A first run, an unchanged run (no job, no commit), a run after a change: the same
    rows and versions as the default runner's store."""
    stores = {}
    for name, beam_args in (("default", IN_MEMORY), ("flink", flink.args())):
        catalog, store = tmp_path / name / "catalog", str(tmp_path / name / "store")
        write_synth_catalog(str(catalog), n_tracks=4, seed=5, duration_s=4.0)
        args = ["--catalog", f"{catalog}/track_*", "--model", tiny_model_uri, "--store", store, *beam_args]
        timed(f"reembed first {name}", reembed.run, args)
        jobs_before = len(flink.jobs())
        reembed.run(args)  # unchanged: nothing read, nothing committed
        assert len(flink.jobs()) == jobs_before and DeltaTable(store).version() == 1
        # A change: one track's bytes replaced, one deleted, one new track (a copy of another).
        shutil.copy(_file(catalog, "track_0002"), _file(catalog, "track_0001"))
        os.remove(_file(catalog, "track_0003"))
        source = _file(catalog, "track_0000")
        shutil.copy(source, catalog / f"track_0009{os.path.splitext(source)[1]}")
        timed(f"reembed change {name}", reembed.run, args)
        stores[name] = store
    tables = {name: DeltaTable(store) for name, store in stores.items()}
    assert tables["flink"].version() == tables["default"].version() == 2
    for version in (1, 2):
        rows = {name: DeltaTable(store, version=version).to_pandas().set_index("track_id").sort_index()
                for name, store in stores.items()}
        assert list(rows["flink"].index) == list(rows["default"].index)
        assert list(rows["flink"]["content_sha256"]) == list(rows["default"]["content_sha256"])
        np.testing.assert_allclose(np.stack(rows["flink"]["embedding"]), np.stack(rows["default"]["embedding"]),
                                   atol=1e-6, rtol=0)


def _file(catalog, track_id: str) -> str:
    (name,) = [name for name in os.listdir(catalog) if name.startswith(track_id + ".")]
    return os.path.join(catalog, name)


def test_external_worker_pool_shared_by_both_taskmanagers(flink, catalog, tiny_model_uri, reference, tmp_path):
    port = free_port()
    pool = start_worker_pool(port)
    try:
        args = flink.args("EXTERNAL", f"127.0.0.1:{port}")
        shards = features(catalog, tmp_path / "features", args, "features flink external")
        assert_same_features(shards, reference)
        assert_both_taskmanagers_worked(flink, r"ExtractLogMel")
        out = embed(["--features", shards], tiny_model_uri, tmp_path / "embed", args, "embed flink external")
        assert_same_embeddings(out, reference["embeddings"])
    finally:
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait()


def test_process_environment_started_by_the_taskmanagers(flink, catalog, tiny_model_uri, reference, tmp_path):
    args = flink.args("PROCESS", process_config(write_process_boot(tmp_path)))
    shards = features(catalog, tmp_path / "features", args, "features flink process")
    assert_same_features(shards, reference)
    assert_both_taskmanagers_worked(flink, r"ExtractLogMel")
    out = embed(["--features", shards], tiny_model_uri, tmp_path / "embed", args, "embed flink process")
    assert_same_embeddings(out, reference["embeddings"])


def _launch(command: list[str]) -> subprocess.Popen:
    """A job in its own process, its harnesses pausing once at a track (PROCESS env)."""
    launcher = os.path.join(os.path.dirname(sys.executable), "musicrep")
    return subprocess.Popen([launcher, *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _paused_harness(pause_file) -> int:
    wait_for(lambda: os.path.exists(pause_file), 180, "a harness to pause at the track")
    with open(pause_file) as handle:
        return int(handle.read())


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _outcome(job: subprocess.Popen, out: str, previous: dict, check_complete) -> str:
    """'completed' (rc 0, the complete, correct set) or 'failed, previous set intact'."""
    output, _ = job.communicate(timeout=420)
    if job.returncode == 0:
        manifest = assert_only_committed(out)
        assert manifest["run_id"] != previous["run_id"]
        check_complete(out)
        return "completed"
    assert "Traceback" not in output.splitlines()[-1], output[-2000:]
    assert read_manifest(out) == previous  # the switch never happened
    for entry in previous["files"]:  # every file of the previous set is there, whole
        assert os.path.getsize(os.path.join(out, entry["name"])) == entry["size_bytes"]
    return "failed, previous set intact"


def test_killed_taskmanager_mid_features_job(flink, catalog, reference, tmp_path):
    out = features(catalog, tmp_path / "features", IN_MEMORY, "features default (previous set)")
    previous = read_manifest(out)
    pause_file = str(tmp_path / "paused")
    config = process_config(write_process_boot(tmp_path), **{PAUSE_ENV: "track:track_0005", PAUSE_ONCE_ENV: pause_file})
    started = time.perf_counter()
    job = _launch(["features", "--input", f"{catalog}/*", "--output", out, "--shards", "2",
                   *flink.args("PROCESS", config)])
    harness = _paused_harness(pause_file)
    taskmanager = _parent(harness)
    assert taskmanager in flink.cluster.taskmanagers
    flink.cluster.kill_taskmanager(flink.cluster.taskmanagers.index(taskmanager))
    os.kill(harness, signal.SIGKILL)  # orphaned with its TaskManager
    flink.cluster.add_taskmanager()  # what Kubernetes does for a lost pod
    outcome = _outcome(job, out, previous, lambda done: assert_same_features(done, reference))
    TIMINGS["features flink process, TaskManager killed: " + outcome] = time.perf_counter() - started
    assert outcome == "completed"  # Flink restarted the job on the replacement
    flink.restore_taskmanagers()


def test_killed_sdk_harness_mid_embed_audio_job(flink, catalog, tiny_model_uri, reference, tmp_path):
    out = embed(["--audio", f"{catalog}/*"], tiny_model_uri, tmp_path / "audio", IN_MEMORY, "embed --audio default (previous set)")
    previous = read_manifest(out)
    pause_file = str(tmp_path / "paused")
    config = process_config(write_process_boot(tmp_path), **{PAUSE_ENV: "track:track_0002", PAUSE_ONCE_ENV: pause_file})
    started = time.perf_counter()
    job = _launch(["embed", "--audio", f"{catalog}/*", "--model", tiny_model_uri, "--output", out,
                   *flink.args("PROCESS", config)])
    os.kill(_paused_harness(pause_file), signal.SIGKILL)
    outcome = _outcome(job, out, previous, lambda done: assert_same_embeddings(done, reference["audio"]))
    TIMINGS["embed --audio flink process, harness killed: " + outcome] = time.perf_counter() - started
    assert outcome == "completed"
    flink.restore_taskmanagers()


def test_cluster_stops_every_jvm_by_pid(flink):
    pids = [flink.cluster.jobmanager, *flink.cluster.taskmanagers]
    assert sorted(flink_cluster.stop(flink.cluster.directory)) == sorted(pids)
    assert not any(flink_cluster._is_ours(pid, flink.cluster.directory) for pid in pids)
    assert flink_cluster.stop(flink.cluster.directory) == []  # idempotent
