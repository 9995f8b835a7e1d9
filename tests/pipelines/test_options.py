"""The offline embedded default of every job."""
import os

from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from musicrep.pipelines.options import make_pipeline_options


def test_default_is_fn_api_runner_with_one_process_per_core():
    options = make_pipeline_options([])
    direct = options.view_as(DirectOptions)
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert direct.direct_running_mode == "multi_processing"
    assert direct.direct_num_workers == os.cpu_count()


def test_explicit_flags_win():
    options = make_pipeline_options(["--direct_num_workers", "1", "--direct_running_mode", "in_memory"])
    direct = options.view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (1, "in_memory")
    options = make_pipeline_options(["--runner", "DataflowRunner"])
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 1  # untouched off the embedded runner


def test_worker_processes_share_the_cores():
    from musicrep.pipelines.options import threads_per_worker

    cores = os.cpu_count()
    assert threads_per_worker(make_pipeline_options(["--direct_num_workers", "1"])) == cores
    assert threads_per_worker(make_pipeline_options([])) == 1
    assert threads_per_worker(make_pipeline_options(["--direct_running_mode", "in_memory"])) is None
    assert threads_per_worker(make_pipeline_options(["--runner", "DataflowRunner"])) is None


def test_a_job_may_choose_its_default_worker_count():
    direct = make_pipeline_options([], default_workers=1).view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (1, "multi_processing")
    direct = make_pipeline_options(["--direct_num_workers", "2"], default_workers=1).view_as(DirectOptions)
    assert direct.direct_num_workers == 2


def test_a_job_may_choose_its_default_running_mode():
    direct = make_pipeline_options([], default_mode="multi_threading").view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (os.cpu_count(), "multi_threading")
    explicit = ["--direct_running_mode", "multi_processing"]
    direct = make_pipeline_options(explicit, default_mode="multi_threading").view_as(DirectOptions)
    assert direct.direct_running_mode == "multi_processing"


def test_prism_runners_use_the_local_binary_unless_told_otherwise(tmp_path, monkeypatch):
    from apache_beam.options.pipeline_options import PrismRunnerOptions

    binary = tmp_path / "prism"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("MUSICREP_PRISM", str(binary))
    for runner in ("PrismRunner", "DirectRunner"):
        options = make_pipeline_options([f"--runner={runner}"])
        assert options.view_as(PrismRunnerOptions).prism_location == str(binary)
    options = make_pipeline_options(["--runner=PrismRunner", "--prism_location=/opt/prism"])
    assert options.view_as(PrismRunnerOptions).prism_location == "/opt/prism"
    assert make_pipeline_options([]).view_as(PrismRunnerOptions).prism_location is None


def test_the_model_jobs_run_their_one_worker_in_the_launcher_unless_given_more():
    from musicrep.pipelines.embed import embed_pipeline_options

    direct = embed_pipeline_options([]).view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (1, "in_memory")
    direct = embed_pipeline_options(["--direct_num_workers=2"]).view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (2, "multi_processing")
    direct = embed_pipeline_options(["--direct_running_mode", "multi_threading"]).view_as(DirectOptions)
    assert (direct.direct_num_workers, direct.direct_running_mode) == (1, "multi_threading")
