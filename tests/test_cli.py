"""The `musicrep` command: one line and exit 2 for refused input, unknown options caught
before any work, TensorFlow's C++ start-up lines hidden unless --verbose."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import wave

import numpy as np
import pytest

from musicrep import cli
from musicrep.errors import ConfigError
from musicrep.pipelines.options import check_beam_args

# What a CPU-only host printed on every job before (absl's pre-init banner, CUDA probing,
# oneDNN and CPU-feature notices).
NOISE = re.compile(r"cuInit|cudart|oneDNN|absl::InitializeLog|cpu_feature_guard")


def _write_wav(path, *, seconds: float = 1.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.tobytes())


def test_an_option_nobody_knows_stops_embed_before_any_work(tmp_path, capsys):
    from musicrep.pipelines.synthetic import write_synthetic_export

    out = tmp_path / "out"
    write_synthetic_export(str(tmp_path / "m"), model_id="m")  # the sidecar is checked first
    code = cli.main(["embed", "--features", str(tmp_path / "x-*"), "--model", str(tmp_path / "m"),
                     "--output", str(out), "--hopp-s", "1"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("musicrep embed: unknown option(s): --hopp-s;") and error.count("\n") == 1
    assert not out.exists()


def test_a_typo_stops_features_before_any_worker_starts(tmp_path, capsys):
    _write_wav(tmp_path / "a.wav")
    out = tmp_path / "out"
    assert cli.main(["features", "--input", str(tmp_path / "*.wav"), "--output", str(out), "--shardz", "2"]) == 2
    assert capsys.readouterr().err.startswith("musicrep features: unknown option(s): --shardz;")
    assert not out.exists()


def test_beam_options_pass_and_beams_own_typos_are_named_with_a_suggestion():
    check_beam_args(["--runner", "FlinkRunner", "--flink_master=localhost:8081", "--direct_num_workers", "2",
                     "--project", "p", "--temp_location", "gs://b/t", "--save_main_session"])
    with pytest.raises(ConfigError, match=r"--direct_num_worker \(did you mean --direct_num_workers\?\)"):
        check_beam_args(["--direct_num_worker", "2"])
    with pytest.raises(ConfigError, match="--precision"):
        check_beam_args(["--precision", "bf16", "--runner", "FnApiRunner"])
    with pytest.raises(ConfigError, match="bad pipeline option.*direct_num_workers"):
        check_beam_args(["--direct_num_workers", "many"])


def test_refused_input_is_one_line_and_exit_2_for_every_command(tmp_path, capsys):
    # features let ConfigError escape as a traceback before; the message names the value.
    assert cli.main(["features", "--input", str(tmp_path / "none-*.wav"), "--output", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error == f"musicrep features: no files match {str(tmp_path / 'none-*.wav')!r}\n"


def test_a_bug_keeps_its_traceback(monkeypatch):
    import musicrep.probes.cli as probe_cli

    def broken(argv):
        raise KeyError("a bug")

    monkeypatch.setattr(probe_cli, "run", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["probe", "--embeddings", "e.parquet", "--labels", "l.csv", "--task", "multiclass", "--output", "o"])


def _embed_job(tmp_path, *flags: str) -> subprocess.CompletedProcess:
    # embed --audio --engine tf: its worker loads TensorFlow (the features job no longer
    # does, and --engine auto runs OpenVINO without TensorFlow on CPUs without AVX-512).
    _write_wav(tmp_path / "a.wav")
    assert cli.main(["model", "init", "--config", "tiny", "--seed", "0", "--output", str(tmp_path / "model")]) == 0
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "MUSICREP_VERBOSE")}
    command = [sys.executable, "-m", "musicrep.cli", *flags, "embed", "--audio", str(tmp_path / "*.wav"),
               "--model", str(tmp_path / "model"), "--engine", "tf", "--output", str(tmp_path / "out"),
               "--direct_num_workers", "1"]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)


def test_jobs_hide_native_start_up_lines_in_launcher_and_workers(tmp_path):
    # The worker (a separate process of the multi-processing runner) imports TensorFlow
    # too: neither may print the start-up lines; the summary stays.
    done = _embed_job(tmp_path)
    assert done.returncode == 0, done.stderr
    assert not NOISE.search(done.stderr), done.stderr
    assert "embed: 1 tracks read, 1 embedded" in done.stdout, done.stdout


def test_verbose_keeps_them(tmp_path):
    done = _embed_job(tmp_path, "--verbose")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^[IWE]\d{4} ", done.stderr, re.MULTILINE), done.stderr


def test_the_script_freezes_its_imports_and_main_called_in_process_does_not():
    """`musicrep` (cli.console) freezes what its command imported, so the collector skips
    it during the job and at exit; main() called from a longer-lived process does not."""
    import gc

    script = (
        "import gc, sys\n"
        "from musicrep import cli\n"
        "sys.argv = ['musicrep', 'synth-catalog', '--help']\n"
        "try:\n"
        "    cli.console()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(gc.get_freeze_count())\n"
    )
    frozen = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(frozen.stdout.strip().splitlines()[-1]) > 10_000
    before = gc.get_freeze_count()
    with pytest.raises(SystemExit):
        cli.main(["synth-catalog", "--help"])
    assert gc.get_freeze_count() == before
