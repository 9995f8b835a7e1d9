"""A local standalone Apache Flink cluster: fetch it, start it, stop it (`musicrep flink-cluster`).

It runs the jobs on a real Flink — a JobManager and N TaskManager JVMs on 127.0.0.1 — as
a data engineer would run them on a cluster, with no Docker and nothing installed by hand.
Both pieces come from the package registries and are kept in a cache folder outside any
checkout (``$MUSICREP_CACHE_DIR``, default ``~/.cache/musicrep``, under ``flink/``):

- **Flink 1.16.3's distribution**, unpacked from the ``deps/`` folders of PyPI's
  ``apache-flink`` and ``apache-flink-libraries`` sdists (``bin/``, ``conf/``, ``lib/``,
  ``plugins/``), downloaded with pip in a throwaway environment — never installed:
  ``apache-flink`` pins an old apache-beam.
- **Beam's Flink job server** for that line, Beam 2.50's ``beam-runners-flink-1.16``
  shaded into one jar by ``docker/flink/pom.xml`` (Maven). The registry serves no
  ``beam-runners-flink-*-job-server`` jar and no newer Flink runner.

A cluster lives in one folder: ``conf/flink-conf.yaml`` (written from `ClusterSpec`),
``log/`` (one log per JVM), and ``cluster.json`` with the REST address and the PID of
every JVM, which `stop` signals — by PID, after checking that the process is still the
JVM this cluster started. Only this module's standard library is needed (no TensorFlow,
no Beam), so the CLI answers at once.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request

from musicrep.errors import ConfigError, MusicrepError

FLINK_VERSION = "1.16.3"
BEAM_RUNNER_VERSION = "2.50.0"  # the newest Beam Flink runner the registry serves (for Flink 1.16)
# The two jars docker/flink/pom.xml builds (artifactId-version-classifier).
JOB_SERVER_JAR = f"beam-flink-1.16-{BEAM_RUNNER_VERSION}-job-server.jar"
TASKMANAGER_JAR = f"beam-flink-1.16-{BEAM_RUNNER_VERSION}-taskmanager.jar"
_PYPI_SDISTS = (f"apache-flink=={FLINK_VERSION}", f"apache-flink-libraries=={FLINK_VERSION}")
_DIST_FOLDERS = ("bin", "conf", "lib", "plugins")  # opt/ and licenses/ are not needed to run
STATE_FILE = "cluster.json"
DEFAULT_CLUSTER_DIR = "flink-cluster"  # under the cache folder
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0

# Flink 1.16 predates Java 17's strong encapsulation: its RPC (Akka, Kryo) reflects into
# these java.base packages.
_OPENS = ("java.lang", "java.net", "java.io", "java.nio", "sun.nio.ch", "java.lang.reflect", "java.text",
          "java.time", "java.util", "java.util.concurrent", "java.util.concurrent.atomic",
          "java.util.concurrent.locks")
JAVA_17_OPTS = " ".join([f"--add-opens=java.base/{p}=ALL-UNNAMED" for p in _OPENS]
                        + ["--add-exports=java.base/sun.net.util=ALL-UNNAMED"])


class FlinkSetupError(MusicrepError):
    """The distribution or the job server cannot be fetched or built here, or a cluster
    did not come up."""


def cache_dir() -> pathlib.Path:
    """Where the distribution, the job server and the default cluster folder live."""
    return pathlib.Path(os.environ.get("MUSICREP_CACHE_DIR") or pathlib.Path.home() / ".cache" / "musicrep") / "flink"


def flink_home(cache: pathlib.Path | None = None) -> pathlib.Path:
    return (cache or cache_dir()) / f"flink-{FLINK_VERSION}"


def job_server_jar(cache: pathlib.Path | None = None) -> pathlib.Path:
    return (cache or cache_dir()) / JOB_SERVER_JAR


def taskmanager_jar(cache: pathlib.Path | None = None) -> pathlib.Path:
    """The runner without Flink, for the TaskManagers' class path (ClusterSpec.runner_on_classpath)."""
    return (cache or cache_dir()) / TASKMANAGER_JAR


def default_pom() -> pathlib.Path:
    """docker/flink/pom.xml of the checkout this package is installed from (editable)."""
    return pathlib.Path(__file__).resolve().parents[1] / "docker" / "flink" / "pom.xml"


# --------------------------------------------------------------------------- fetching


def fetch(cache: pathlib.Path | None = None, *, pom: pathlib.Path | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """Makes sure the distribution and the job-server jar are in the cache; returns both.

    Each is fetched once per machine: a second call finds them and does nothing. Writes go
    to a temporary name renamed into place, so an interrupted fetch leaves nothing half-made.
    """
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return _fetch_distribution(cache), _build_job_server(cache, pom or default_pom())


def _fetch_distribution(cache: pathlib.Path) -> pathlib.Path:
    home = flink_home(cache)
    if (home / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
        return home
    with tempfile.TemporaryDirectory(dir=cache, prefix=".fetch-") as work:
        work = pathlib.Path(work)
        # pip prepares an sdist's metadata from setup.py, which needs setuptools and wheel;
        # a throwaway environment keeps them (and the sdists) out of the user's.
        _run([sys.executable, "-m", "venv", str(work / "venv")], "create a virtual environment for pip")
        pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
        _run(pip + ["install", "setuptools", "wheel"], "install setuptools and wheel")
        _run(pip + ["download", "--no-deps", "--no-build-isolation", "-d", str(work / "sdists"), *_PYPI_SDISTS],
             f"download {' and '.join(_PYPI_SDISTS)} from PyPI")
        staged = work / "dist"
        for sdist in sorted((work / "sdists").glob("*.tar.gz")):
            _unpack_deps(sdist, staged)
        if not (staged / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
            raise FlinkSetupError(f"the sdists of {_PYPI_SDISTS} held no Flink distribution")
        for script in (staged / "bin").iterdir():
            script.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)
        staged.rename(home)
    return home


def _unpack_deps(sdist: pathlib.Path, target: pathlib.Path) -> None:
    """Extracts `*/deps/{bin,conf,lib,plugins}/...` of one sdist into `target`."""
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            parts = pathlib.PurePosixPath(member.name).parts
            if len(parts) < 4 or parts[1] != "deps" or parts[2] not in _DIST_FOLDERS:
                continue
            if not (member.isfile() or member.isdir()):
                continue
            member.name = "/".join(parts[2:])
            archive.extract(member, target, filter="data")


def _build_job_server(cache: pathlib.Path, pom: pathlib.Path) -> pathlib.Path:
    jars = {name: cache / name for name in (JOB_SERVER_JAR, TASKMANAGER_JAR)}
    if all(jar.is_file() for jar in jars.values()):
        return jars[JOB_SERVER_JAR]
    if not pom.is_file():
        raise FlinkSetupError(f"{pom} not found: build the job server from a musicrep checkout")
    if shutil.which("mvn") is None or shutil.which("java") is None:
        raise FlinkSetupError("building Beam's Flink job server needs `java` and `mvn` on PATH")
    build = cache / ".job-server-build"
    _run(["mvn", "-B", "-q", "-f", str(pom), "package", "-Dmaven.test.skip=true", f"-DbuildDirectory={build}"],
         f"build {JOB_SERVER_JAR} and {TASKMANAGER_JAR} with Maven")
    for name, jar in jars.items():
        if not (build / name).is_file():
            raise FlinkSetupError(f"Maven finished but {build / name} is missing")
        (build / name).rename(jar)
    shutil.rmtree(build, ignore_errors=True)
    return jars[JOB_SERVER_JAR]


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise FlinkSetupError(f"could not {what} (exit {done.returncode}): " + " | ".join(tail))


# --------------------------------------------------------------------------- the cluster


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """What a local cluster is made of. The memory and network settings are the ones Beam
    jobs need on 2 cores (FLINK.md): below 256 MB of network memory or 64 sort-shuffle
    buffers a Beam batch job fails with "Insufficient number of network buffers"."""

    taskmanagers: int = 2
    slots: int = 1
    taskmanager_memory: str = "2048m"
    jobmanager_memory: str = "1600m"
    network_memory: str = "256mb"
    restart_attempts: int = 3
    # Longer than the jobs' --environment_cache_millis (docs/runners.md says so): a restarted
    # job must find the harnesses of the failed attempt released, not reuse a dead one.
    restart_delay_s: int = 10
    # Beam's runner on the TaskManagers' class path (loaded parent-first). Beam 2.50's
    # Flink runner releases a job's SDK harnesses after every task when its classes come
    # from the job's class loader (FlinkExecutableStageContextFactory), and keeps them for
    # --environment_cache_millis when they come from the cluster's: one harness per
    # TaskManager instead of one per task.
    runner_on_classpath: bool = True

    def check(self) -> None:
        if self.taskmanagers < 1 or self.slots < 1:
            raise ConfigError(f"a cluster needs >= 1 TaskManager with >= 1 slot, got {self.taskmanagers} x {self.slots}")
        if self.restart_attempts < 0 or self.restart_delay_s < 0:
            raise ConfigError("restart attempts and delay must be >= 0")

    def flink_conf(self, *, rpc_port: int, rest_port: int) -> dict[str, str]:
        address = "127.0.0.1"
        return {
            "jobmanager.rpc.address": address,
            "jobmanager.rpc.port": str(rpc_port),
            "jobmanager.bind-host": address,
            "taskmanager.bind-host": address,
            "taskmanager.host": address,
            "rest.address": address,
            "rest.bind-address": address,
            "rest.port": str(rest_port),
            "blob.server.port": "0",
            "taskmanager.rpc.port": "0",
            "taskmanager.data.port": "0",
            "env.java.opts": JAVA_17_OPTS,
            "jobmanager.memory.process.size": self.jobmanager_memory,
            "taskmanager.memory.process.size": self.taskmanager_memory,
            "taskmanager.numberOfTaskSlots": str(self.slots),
            "parallelism.default": str(self.taskmanagers * self.slots),
            "taskmanager.memory.network.min": self.network_memory,
            "taskmanager.memory.network.max": self.network_memory,
            "taskmanager.network.sort-shuffle.min-buffers": "64",
            # A TaskManager lost mid-job (killed, its host gone) fails its tasks; the job is
            # restarted from the beginning on the TaskManagers that remain or replace it.
            "restart-strategy": "fixed-delay" if self.restart_attempts else "none",
            "restart-strategy.fixed-delay.attempts": str(self.restart_attempts),
            "restart-strategy.fixed-delay.delay": f"{self.restart_delay_s} s",
            # Notice a killed TaskManager in seconds rather than the default 50 s.
            "heartbeat.interval": "2000",
            "heartbeat.timeout": "10000",
            "cluster.evenly-spread-out-slots": "true",
            # Every class the TaskManagers have (the runner and all it links to) is taken
            # from there, not from the job's jar: one copy of each, and Beam sees its
            # classes as the cluster's own (below).
            **({"classloader.resolve-order": "parent-first"} if self.runner_on_classpath else {}),
        }


@dataclasses.dataclass
class Cluster:
    """A running local cluster (what cluster.json holds)."""

    directory: pathlib.Path
    flink_home: pathlib.Path
    rest_port: int
    jobmanager: int
    taskmanagers: list[int]
    spec: ClusterSpec

    @property
    def master(self) -> str:
        """What `--flink_master` takes."""
        return f"127.0.0.1:{self.rest_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def rest(self, path: str) -> dict:
        """GET one REST API resource (`/overview`, `/jobs/overview`, `/taskmanagers`, ...)."""
        with urllib.request.urlopen(self.rest_url + path, timeout=10) as response:
            return json.load(response)

    def save(self) -> None:
        state = dataclasses.asdict(self)
        state.update(directory=str(self.directory), flink_home=str(self.flink_home))
        tmp = self.directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.directory / STATE_FILE)

    @classmethod
    def load(cls, directory: pathlib.Path) -> "Cluster":
        path = pathlib.Path(directory) / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"no cluster in {directory} (no {STATE_FILE})")
        state = json.loads(path.read_text())
        state.update(directory=pathlib.Path(state["directory"]), flink_home=pathlib.Path(state["flink_home"]),
                     spec=ClusterSpec(**state["spec"]))
        return cls(**state)

    def add_taskmanager(self) -> int:
        """Starts one more TaskManager (as Kubernetes replaces a lost pod); returns its PID."""
        pid = _start_jvm(self, "taskmanager", len(self.taskmanagers))
        self.taskmanagers.append(pid)
        self.save()
        return pid

    def kill_taskmanager(self, index: int = 0) -> int:
        """SIGKILLs one TaskManager (a crash, not a shutdown); returns its PID."""
        pid = self.taskmanagers.pop(index)
        _signal(pid, self.directory, signal.SIGKILL)
        _wait_gone([pid], STOP_TIMEOUT_S)
        self.save()
        return pid

    def wait_for_taskmanagers(self, count: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Waits until the JobManager sees `count` registered TaskManagers."""
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                seen = self.rest("/overview")["taskmanagers"]
                if seen == count:
                    return
            self._check_alive()
            time.sleep(0.5)
        raise FlinkSetupError(f"{seen} of {count} TaskManagers registered after {timeout_s:.0f} s; "
                              f"logs: {self.directory / 'log'}")

    def _check_alive(self) -> None:
        for pid in [self.jobmanager, *self.taskmanagers]:
            if not _is_ours(pid, self.directory):
                raise FlinkSetupError(f"Flink process {pid} exited; logs: {self.directory / 'log'}")


def start(directory: pathlib.Path | None = None, spec: ClusterSpec = ClusterSpec(), *,
          rest_port: int | None = None, home: pathlib.Path | None = None) -> Cluster:
    """Starts a JobManager and `spec.taskmanagers` TaskManagers; returns when all registered.

    `directory` (default: the cache folder's flink-cluster/) must hold no running cluster.
    Ports are free ones unless `rest_port` is given.
    """
    spec.check()
    directory = pathlib.Path(directory or cache_dir() / DEFAULT_CLUSTER_DIR).resolve()
    home = pathlib.Path(home or flink_home())
    if not (home / "bin" / "jobmanager.sh").is_file():
        raise ConfigError(f"no Flink distribution in {home}: run `musicrep flink-cluster fetch` first")
    with contextlib.suppress(ConfigError):
        running = Cluster.load(directory)
        if any(_is_ours(pid, directory) for pid in [running.jobmanager, *running.taskmanagers]):
            raise ConfigError(f"a cluster is already running in {directory} (REST {running.rest_url}); stop it first")
    (directory / "log").mkdir(parents=True, exist_ok=True)
    conf_dir = directory / "conf"
    conf_dir.mkdir(exist_ok=True)
    rest_port = rest_port or _free_port()
    conf = spec.flink_conf(rpc_port=_free_port(), rest_port=rest_port)
    (conf_dir / "flink-conf.yaml").write_text("".join(f"{key}: {value}\n" for key, value in conf.items()))
    for name in ("log4j-console.properties", "logback-console.xml"):
        if (home / "conf" / name).is_file():
            shutil.copy(home / "conf" / name, conf_dir / name)
    lib_dir = directory / "lib"  # the distribution's jars, and the runner's where asked
    shutil.rmtree(lib_dir, ignore_errors=True)
    lib_dir.mkdir()
    jars = sorted((home / "lib").glob("*.jar"))
    if spec.runner_on_classpath:
        runner = taskmanager_jar(home.parent)
        if not runner.is_file():
            raise ConfigError(f"{runner} is missing: run `musicrep flink-cluster fetch` first")
        jars.append(runner)
    for jar in jars:
        (lib_dir / jar.name).symlink_to(jar)
    cluster = Cluster(directory=directory, flink_home=home, rest_port=rest_port, jobmanager=0, taskmanagers=[],
                      spec=spec)
    try:
        cluster.jobmanager = _start_jvm(cluster, "jobmanager", 0)
        cluster.save()
        for index in range(spec.taskmanagers):
            cluster.taskmanagers.append(_start_jvm(cluster, "taskmanager", index))
            cluster.save()
        cluster.wait_for_taskmanagers(spec.taskmanagers)
    except BaseException:
        stop(directory)
        raise
    return cluster


def stop(directory: pathlib.Path | None = None) -> list[int]:
    """Stops every JVM of the cluster in `directory` (SIGTERM, then SIGKILL after
    STOP_TIMEOUT_S); returns the PIDs that were running. Idempotent."""
    directory = pathlib.Path(directory or cache_dir() / DEFAULT_CLUSTER_DIR).resolve()
    try:
        cluster = Cluster.load(directory)
    except ConfigError:
        return []
    pids = [pid for pid in [*cluster.taskmanagers, cluster.jobmanager] if pid and _is_ours(pid, directory)]
    for pid in pids:
        _signal(pid, directory, signal.SIGTERM)
    if not _wait_gone(pids, STOP_TIMEOUT_S):
        for pid in pids:
            _signal(pid, directory, signal.SIGKILL)
        _wait_gone(pids, STOP_TIMEOUT_S)
    (directory / STATE_FILE).unlink(missing_ok=True)
    return pids


def _start_jvm(cluster: Cluster, role: str, index: int) -> int:
    """One JobManager or TaskManager in the foreground of its own session (so the
    launcher's signals do not reach it); the script `exec`s the JVM, so the PID is the JVM's."""
    env = dict(os.environ, FLINK_CONF_DIR=str(cluster.directory / "conf"), FLINK_LOG_DIR=str(cluster.directory / "log"),
               FLINK_LIB_DIR=str(cluster.directory / "lib"))
    # A Beam job's Python harness inherits the TaskManager's environment (PROCESS).
    log = open(cluster.directory / "log" / f"{role}-{index}-{int(time.time() * 1000)}.out", "ab")
    with log:
        process = subprocess.Popen(
            [str(cluster.flink_home / "bin" / f"{role}.sh"), "start-foreground"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    return process.pid


def _is_ours(pid: int, directory: pathlib.Path) -> bool:
    """Whether `pid` is alive and a process of the cluster in `directory` (its environment
    names the cluster's conf folder), so a recycled PID is never signalled."""
    try:
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    if _zombie(pid):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child, exited: reap it
        return False
    return f"FLINK_CONF_DIR={directory / 'conf'}".encode() in environ.split(b"\0")


def _signal(pid: int, directory: pathlib.Path, signum: int) -> None:
    if _is_ours(pid, directory):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def _wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if pathlib.Path(f"/proc/{pid}").exists() and not _zombie(pid):
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.2)
    return False


def _zombie(pid: int) -> bool:
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the command


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="musicrep flink-cluster",
        description="A local standalone Flink 1.16.3 cluster on 127.0.0.1 (JobManager + TaskManager JVMs), "
        "with Beam 2.50's Flink job server, for running the jobs with --runner=FlinkRunner.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("fetch", help="download Flink from PyPI and build the job-server jar (once per machine)")
    start_parser = commands.add_parser("start", help="start a cluster and print the options that run a job on it")
    start_parser.add_argument("--taskmanagers", type=int, default=2, help="TaskManager JVMs (default 2)")
    start_parser.add_argument("--slots", type=int, default=1, help="task slots per TaskManager (default 1)")
    start_parser.add_argument("--rest-port", type=int, default=None, help="JobManager REST port (default: a free one)")
    start_parser.add_argument("--taskmanager-memory", default=ClusterSpec.taskmanager_memory,
                              help=f"process memory per TaskManager (default {ClusterSpec.taskmanager_memory})")
    commands.add_parser("stop", help="stop the cluster (by PID)")
    commands.add_parser("status", help="the cluster's PIDs and what its REST API reports")
    for sub in commands.choices.values():
        sub.add_argument("--dir", type=pathlib.Path, default=None,
                         help=f"the cluster's folder (default {cache_dir() / DEFAULT_CLUSTER_DIR})")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        home, jar = fetch()
        print(f"flink: {home}\njob server: {jar}")
    elif args.command == "start":
        fetch()
        spec = ClusterSpec(taskmanagers=args.taskmanagers, slots=args.slots, taskmanager_memory=args.taskmanager_memory)
        cluster = start(args.dir, spec, rest_port=args.rest_port)
        print(f"Flink {FLINK_VERSION}: JobManager pid {cluster.jobmanager}, TaskManager pids "
              f"{cluster.taskmanagers}; REST {cluster.rest_url}; logs {cluster.directory / 'log'}")
        print(f"run a job on it with:\n  --runner=FlinkRunner --flink_master={cluster.master} "
              f"--flink_job_server_jar={job_server_jar()} --environment_type=LOOPBACK "
              f"--parallelism={spec.taskmanagers * spec.slots} --environment_cache_millis=5000")
    elif args.command == "stop":
        stopped = stop(args.dir)
        print(f"stopped {len(stopped)} Flink processes {stopped}" if stopped else "no cluster running")
    else:
        cluster = Cluster.load(args.dir or cache_dir() / DEFAULT_CLUSTER_DIR)
        alive = {pid: _is_ours(pid, cluster.directory) for pid in [cluster.jobmanager, *cluster.taskmanagers]}
        try:
            overview = cluster.rest("/overview")
        except (OSError, ValueError) as error:
            overview = {"error": str(error)}
        print(json.dumps({"rest": cluster.rest_url, "alive": alive, "overview": overview}, indent=2))
    return 0
