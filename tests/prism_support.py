"""Finding (or building) Prism, Beam's portable local runner, for the runner tests.

Order: $MUSICREP_PRISM; a `prism` already in Go's bin folder; `go install` of the
pinned version when `go` exists (a failed build fails the tests: CI must not silently
skip the Prism paths); without `go`, Beam's own download (offline: the tests skip).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from musicrep.pipelines.options import local_prism_binary

PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism@v2.77.0"
BUILD_TIMEOUT_S = 1200


def find_or_build_prism() -> str:
    explicit = os.environ.get("MUSICREP_PRISM")
    if explicit:
        if not os.access(explicit, os.X_OK):
            pytest.fail(f"MUSICREP_PRISM={explicit!r} is not an executable file")
        return explicit
    found = local_prism_binary()
    if found:
        return found
    if shutil.which("go"):
        return _go_install()
    return _beam_download()


def _go_install() -> str:
    build = subprocess.run(
        ["go", "install", PRISM_MODULE], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    if build.returncode != 0:
        pytest.fail(f"`go install {PRISM_MODULE}` failed (exit {build.returncode}):\n{build.stderr[-3000:]}")
    gobin = subprocess.run(["go", "env", "GOBIN", "GOPATH"], capture_output=True, text=True, check=True).stdout.split("\n")
    path = os.path.join(gobin[0] or os.path.join(gobin[1], "bin"), "prism")
    if not os.access(path, os.X_OK):
        pytest.fail(f"`go install {PRISM_MODULE}` succeeded but {path} is not there")
    return path


def _beam_download() -> str:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.prism_runner import PrismJobServer

    try:
        return PrismJobServer(PipelineOptions([]))._get_executable_path()  # pylint: disable=protected-access
    except Exception as error:  # offline: Beam's download of its release binary fails
        pytest.skip(f"no `go` to build Prism and Beam's Prism download failed: {str(error)[:300]}")


def prism_args(binary: str, *, environment: str = "LOOPBACK", config: str | None = None) -> list[str]:
    """Beam options running a job on Prism in the given SDK-harness environment."""
    args = ["--runner=PrismRunner", f"--prism_location={binary}", f"--environment_type={environment}"]
    return args + ([f"--environment_config={config}"] if config else [])


# The PROCESS environment's boot contract (what Beam's Go boot does, the part a Python
# worker needs): the runner starts COMMAND --id=ID --provision_endpoint=HOST:PORT; the
# boot asks the provision service for the pipeline options and the control and logging
# endpoints, and starts sdk_worker_main with them in its environment.
_BOOT_PROGRAM = '''
import os, sys
import grpc
from google.protobuf import json_format, text_format
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc

flags = dict(arg.lstrip("-").split("=", 1) for arg in sys.argv[1:])
worker_id = flags["id"].strip("'")
channel = grpc.insecure_channel(flags["provision_endpoint"])
info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
    beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", worker_id)]).info
env = dict(os.environ,
           WORKER_ID=worker_id,
           PIPELINE_OPTIONS=json_format.MessageToJson(info.pipeline_options),
           CONTROL_API_SERVICE_DESCRIPTOR=text_format.MessageToString(info.control_endpoint),
           LOGGING_API_SERVICE_DESCRIPTOR=text_format.MessageToString(info.logging_endpoint),
           RUNNER_CAPABILITIES=" ".join(info.runner_capabilities))
os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)
'''


def write_process_boot(folder) -> str:
    """A boot script for --environment_type=PROCESS that runs this interpreter's SDK worker."""
    import sys

    program = os.path.join(folder, "boot.py")
    with open(program, "w", encoding="utf-8") as handle:
        handle.write(_BOOT_PROGRAM)
    boot = os.path.join(folder, "boot.sh")
    with open(boot, "w", encoding="utf-8") as handle:
        handle.write(f'#!/bin/sh\nexec "{sys.executable}" "{program}" "$@"\n')
    os.chmod(boot, 0o755)
    return boot


def start_worker_pool(port: int) -> subprocess.Popen:
    """musicrep's worker pool (python -m musicrep.pipelines.harness) for --environment_type=EXTERNAL
    --environment_config=localhost:PORT; returns once it serves (it prints a line then)."""
    import sys

    pool = subprocess.Popen(
        [sys.executable, "-m", "musicrep.pipelines.harness", "--port", str(port)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    line = pool.stdout.readline()
    assert line.startswith("worker pool on"), line
    return pool


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]
