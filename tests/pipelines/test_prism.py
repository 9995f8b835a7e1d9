"""The jobs on Prism, Beam's portable runner, in the SDK-harness environments Flink and
Dataflow use (EXTERNAL worker pool, PROCESS boot), and the runners the launcher refuses.
Outputs must equal the default runner's: log-mel bytes per track, embeddings within 1e-6."""
from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

from job_outputs import assert_only_committed, dead_letter_stages, embeddings, log_mels
from musicrep.cli import main as cli_main
from musicrep.pipelines import embed as embed_job
from musicrep.pipelines import features as features_job
from prism_support import free_port, prism_args, start_worker_pool, write_process_boot

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


@pytest.fixture(scope="module")
def catalog(mixed_catalog):
    return mixed_catalog


def run_both_jobs(catalog, out, tiny_model_uri, beam_args: list[str]) -> tuple[dict, dict, list]:
    """features then embed with `beam_args`: log-mel bytes and embeddings by track, dead letters."""
    features_job.run(["--input", f"{catalog}/*", "--output", f"{out}/features", *beam_args])
    embed_job.run(["--features", f"{out}/features", "--model", tiny_model_uri, "--output", f"{out}/embeddings", *beam_args])
    assert_only_committed(f"{out}/features")
    assert_only_committed(f"{out}/embeddings")
    return log_mels(f"{out}/features"), embeddings(f"{out}/embeddings"), dead_letter_stages(f"{out}/features")


@pytest.fixture(scope="module")
def reference(catalog, tiny_model_uri, tmp_path_factory):
    return run_both_jobs(catalog, tmp_path_factory.mktemp("reference"), tiny_model_uri, IN_MEMORY)


def assert_same_outputs(outputs, reference) -> None:
    by_track, vectors, letters = outputs
    assert letters == reference[2] == [("bad", "decode")]
    assert sorted(by_track) == sorted(reference[0]) == ["a", "b"]
    assert all(by_track[t] == reference[0][t] for t in by_track)
    assert sorted(vectors) == ["a", "b"]
    for track_id, embedding in vectors.items():
        np.testing.assert_allclose(embedding, reference[1][track_id], atol=1e-6)


@pytest.mark.slow
def test_prism_external_worker_pool(catalog, tiny_model_uri, prism_binary, reference, tmp_path):
    port = free_port()
    pool = start_worker_pool(port)
    try:
        args = prism_args(prism_binary, environment="EXTERNAL", config=f"localhost:{port}")
        assert_same_outputs(run_both_jobs(catalog, tmp_path, tiny_model_uri, args), reference)
    finally:
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait()


@pytest.mark.slow
def test_prism_process_environment(catalog, tiny_model_uri, prism_binary, reference, tmp_path):
    boot = write_process_boot(tmp_path)
    args = prism_args(prism_binary, environment="PROCESS", config=f'{{"command": "{boot}"}}')
    assert_same_outputs(run_both_jobs(catalog, tmp_path, tiny_model_uri, args), reference)


@pytest.mark.slow
def test_direct_runner_picks_the_local_prism_offline(catalog, prism_binary, reference, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MUSICREP_PRISM", prism_binary)
    caplog.set_level(logging.INFO, logger="apache_beam.runners.direct.direct_runner")
    features_job.run(["--input", f"{catalog}/*", "--output", str(tmp_path), "--runner=DirectRunner"])
    assert "Running pipeline with PrismRunner" in caplog.text
    assert "Falling back" not in caplog.text
    assert log_mels(str(tmp_path)) == reference[0]


@pytest.mark.parametrize("runner", ["DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_dask_runner_is_refused_before_any_work(catalog, tmp_path, capsys, runner):
    out = tmp_path / "out"
    assert cli_main(["features", "--input", f"{catalog}/*", "--output", str(out), f"--runner={runner}"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "DaskRunner" in message and "tagged outputs" in message
    assert not out.exists()
