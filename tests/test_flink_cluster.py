"""The local Flink cluster's bookkeeping (musicrep.flink_cluster), without starting Flink:
its configuration, its state file, and that stop only ever signals its own processes."""
from __future__ import annotations

import os
import subprocess
import sys
import io
import tarfile

import pytest

from musicrep import flink_cluster
from musicrep.errors import ConfigError


def test_flink_conf_binds_loopback_and_sizes_the_network_for_beam():
    conf = flink_cluster.ClusterSpec(taskmanagers=3, slots=2).flink_conf(rpc_port=6123, rest_port=8082)
    addresses = {key: value for key, value in conf.items() if key.endswith(("address", "bind-host", ".host"))}
    assert set(addresses) == {"jobmanager.rpc.address", "jobmanager.bind-host", "taskmanager.bind-host",
                              "taskmanager.host", "rest.address", "rest.bind-address"}
    assert set(addresses.values()) == {"127.0.0.1"}
    assert (conf["rest.port"], conf["jobmanager.rpc.port"]) == ("8082", "6123")
    assert (conf["taskmanager.numberOfTaskSlots"], conf["parallelism.default"]) == ("2", "6")
    assert conf["taskmanager.memory.network.min"] == conf["taskmanager.memory.network.max"] == "256mb"
    assert conf["taskmanager.network.sort-shuffle.min-buffers"] == "64"
    assert conf["restart-strategy"] == "fixed-delay" and conf["restart-strategy.fixed-delay.attempts"] == "3"
    from flink_support import ENVIRONMENT_CACHE_MS  # a restarted job must not reuse a dead harness

    assert conf["restart-strategy.fixed-delay.delay"] == "10 s" and ENVIRONMENT_CACHE_MS < 10_000
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in conf["env.java.opts"]
    assert flink_cluster.ClusterSpec(restart_attempts=0).flink_conf(rpc_port=1, rest_port=2)["restart-strategy"] == "none"


@pytest.mark.parametrize("spec", [flink_cluster.ClusterSpec(taskmanagers=0), flink_cluster.ClusterSpec(slots=0),
                                  flink_cluster.ClusterSpec(restart_attempts=-1)])
def test_bad_cluster_specs_are_refused(spec, tmp_path):
    with pytest.raises(ConfigError):
        flink_cluster.start(tmp_path, spec, home=tmp_path)


def test_start_without_a_distribution_names_the_fetch_command(tmp_path):
    with pytest.raises(ConfigError, match="musicrep flink-cluster fetch"):
        flink_cluster.start(tmp_path / "c", home=tmp_path / "no-flink")


def test_stop_signals_only_processes_of_its_own_cluster(tmp_path):
    directory = tmp_path / "cluster"
    (directory / "conf").mkdir(parents=True)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "FLINK_CONF_DIR": str(directory / "conf")})
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        cluster = flink_cluster.Cluster(directory=directory, flink_home=tmp_path, rest_port=1, jobmanager=ours.pid,
                                        taskmanagers=[stranger.pid], spec=flink_cluster.ClusterSpec())
        cluster.save()
        assert flink_cluster.Cluster.load(directory) == cluster  # cluster.json round trip
        assert flink_cluster.stop(directory) == [ours.pid]  # the stranger's PID is not ours
        ours.wait(5)  # (stop may have reaped it already: then Popen sees status 0)
        assert not os.path.exists(f"/proc/{ours.pid}")
        assert stranger.poll() is None
        assert not (directory / flink_cluster.STATE_FILE).exists()
        assert flink_cluster.stop(directory) == []  # idempotent
    finally:
        stranger.kill()
        stranger.wait()


def test_unpack_takes_only_the_distribution_folders(tmp_path):
    sdist = tmp_path / "apache-flink-libraries-1.16.3.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        for name in ("x-1/deps/lib/flink-dist.jar", "x-1/deps/opt/big.jar", "x-1/setup.py", "x-1/deps/bin/config.sh"):
            info = tarfile.TarInfo(name)
            info.size = len(name)
            archive.addfile(info, io.BytesIO(name.encode()))
    flink_cluster._unpack_deps(sdist, tmp_path / "dist")
    found = sorted(str(p.relative_to(tmp_path / "dist")) for p in (tmp_path / "dist").rglob("*") if p.is_file())
    assert found == ["bin/config.sh", "lib/flink-dist.jar"]
    assert (tmp_path / "dist/lib/flink-dist.jar").read_text() == "x-1/deps/lib/flink-dist.jar"


def test_cli_help_answers_without_flink(capsys):
    from musicrep.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["flink-cluster", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("fetch", "start", "stop", "status"))
