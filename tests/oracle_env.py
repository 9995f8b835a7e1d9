"""The reference implementation (sxmp-mule, GPL-3.0) as an oracle, in a throwaway venv.

It is never imported into our process: tests write a small script, run it with the
oracle's own Python (TensorFlow 2.13.1, librosa 0.9.2) and compare what it saves.
The venv is cached outside the clone (MUSICREP_CACHE, default ~/.cache/musicrep) so CI
builds it once per machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

MULE_VERSION = "1.1.2"
# TF 2.13.1 needs numpy < 1.25; pip would otherwise pick a numpy it cannot load.
MULE_REQUIREMENTS = [f"sxmp-mule=={MULE_VERSION}", "numpy<1.25"]


def cache_dir() -> Path:
    return Path(os.environ.get("MUSICREP_CACHE", Path.home() / ".cache" / "musicrep"))


def mule_python() -> Path:
    """Path of the oracle venv's python, creating the venv on first use."""
    venv = cache_dir() / f"mule-{MULE_VERSION}"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if not marker.exists():
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *MULE_REQUIREMENTS], check=True
        )
        marker.write_text("ok\n")
    return python


def run_oracle(script: str, *args: str, timeout_s: float = 1200) -> subprocess.CompletedProcess:
    """Run `script` (Python source) with the oracle's interpreter; raise with its stderr."""
    return _run_in_oracle([str(mule_python()), "-c", script, *args], timeout_s=timeout_s)


def run_oracle_program(program: str, *args: str, timeout_s: float = 1200) -> subprocess.CompletedProcess:
    """Run one of the oracle venv's console scripts (e.g. `mule analyze ...`); raise with its stderr."""
    return _run_in_oracle([str(mule_python().parent / program), *args], timeout_s=timeout_s)


def _run_in_oracle(command: list[str], *, timeout_s: float) -> subprocess.CompletedProcess:
    if shutil.which("ffmpeg") is None:
        pytest.skip("the reference reads audio through the ffmpeg program; install ffmpeg")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout_s)
    if result.returncode != 0:
        raise AssertionError(f"oracle {Path(command[0]).name} failed:\n{result.stderr[-4000:]}")
    return result
