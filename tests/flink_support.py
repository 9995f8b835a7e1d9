"""A real Flink for the tests: the project's local standalone cluster (`musicrep.flink_cluster`).

One cluster per test session — a JobManager and two TaskManagers with one slot each, on
127.0.0.1 — with Beam 2.50's Flink job server. Jobs run on it exactly as a user runs them
on any Flink: ``--runner=FlinkRunner --flink_master=HOST:PORT --flink_job_server_jar=JAR``.

When Flink cannot be had (no Java or Maven, the registry refuses a download), the Flink
tests skip with the reason, unless ``MUSICREP_REQUIRE_FLINK=1`` (what scripts/test.sh sets
where Java and Maven exist), which makes that a failure.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import time

import pytest

from musicrep import flink_cluster

PARALLELISM = 2
ENVIRONMENT_CACHE_MS = 5_000  # below the cluster's restart delay (ClusterSpec.restart_delay_s)


def flink_required() -> bool:
    return os.environ.get("MUSICREP_REQUIRE_FLINK", "") not in ("", "0", "false", "False")


@dataclasses.dataclass
class FlinkForTests:
    cluster: flink_cluster.Cluster
    jar: pathlib.Path
    work: pathlib.Path

    def args(self, environment: str = "LOOPBACK", config: str | None = None) -> list[str]:
        """Beam options that run a job on this cluster with the harness in `environment`."""
        artifacts = self.work / "artifacts"
        artifacts.mkdir(exist_ok=True)
        args = [
            "--runner=FlinkRunner",
            f"--flink_master={self.cluster.master}",
            f"--flink_job_server_jar={self.jar}",
            f"--environment_type={environment}",
            f"--parallelism={PARALLELISM}",
            f"--artifacts_dir={artifacts}",
            # One harness per TaskManager for the whole job (the runner is on the
            # cluster's class path): not one started per Flink task.
            f"--environment_cache_millis={ENVIRONMENT_CACHE_MS}",
        ]
        return args + ([f"--environment_config={config}"] if config else [])

    def jobs(self) -> list[dict]:
        """Every job the cluster ran, newest first (REST /jobs/overview)."""
        return sorted(self.cluster.rest("/jobs/overview")["jobs"], key=lambda job: -job["start-time"])

    def records_per_taskmanager(self, job_id: str, vertex_pattern: str) -> dict[str, int]:
        """Records each TaskManager read in the job's vertices whose name matches."""
        per_taskmanager: dict[str, int] = {}
        for vertex in self.cluster.rest(f"/jobs/{job_id}")["vertices"]:
            if not re.search(vertex_pattern, vertex["name"]):
                continue
            for taskmanager in self.cluster.rest(f"/jobs/{job_id}/vertices/{vertex['id']}/taskmanagers")["taskmanagers"]:
                name = taskmanager["taskmanager-id"]
                per_taskmanager[name] = per_taskmanager.get(name, 0) + taskmanager["metrics"]["read-records"]
        return per_taskmanager

    def restore_taskmanagers(self) -> None:
        """Back to PARALLELISM live TaskManagers (after a test killed one)."""
        self.cluster.taskmanagers = [pid for pid in self.cluster.taskmanagers
                                     if flink_cluster._is_ours(pid, self.cluster.directory)]
        while len(self.cluster.taskmanagers) < PARALLELISM:
            self.cluster.add_taskmanager()
        self.cluster.wait_for_taskmanagers(PARALLELISM)


def start_flink(work: pathlib.Path) -> FlinkForTests:
    """Fetches (cached) and starts the session's cluster; skips or fails when impossible."""
    try:
        _, jar = flink_cluster.fetch()
        cluster = flink_cluster.start(work / "cluster", flink_cluster.ClusterSpec(taskmanagers=PARALLELISM, slots=1))
    except flink_cluster.FlinkSetupError as error:
        if flink_required():
            pytest.fail(f"Flink is required (MUSICREP_REQUIRE_FLINK=1) but: {error}")
        pytest.skip(f"no Flink on this machine: {error}")
    return FlinkForTests(cluster=cluster, jar=jar, work=work)


def process_config(boot: str, **env: str) -> str:
    """--environment_config of a PROCESS environment: the boot command and its environment."""
    return json.dumps({"command": boot, "env": env})


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
