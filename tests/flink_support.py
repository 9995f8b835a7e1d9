"""Running Beam pipelines on a real Apache Flink in tests: the job-server jar and the options.

Beam's Python FlinkRunner starts Beam's Flink job server (a Java jar) which, with
``--flink_master=[local]``, runs the pipeline on Flink's own embedded mini-cluster. The SDK
harness is this Python process (``--environment_type=LOOPBACK``), so no Docker is needed.

The jar is `org.apache.beam:beam-runners-<flink>-job-server:<beam>` on Maven Central. It is
looked up, in order, in

1. ``$MUSICREP_FLINK_JOB_SERVER_JAR`` (a path; an error if it does not exist),
2. the cache folder ``$MUSICREP_CACHE_DIR`` (default ``~/.cache/musicrep``),
3. Maven's local repository (``~/.m2/repository``),

and otherwise fetched with ``mvn dependency:copy`` into the cache folder, so CI fetches it
once per machine. ``$MUSICREP_FLINK_VERSION`` picks the Flink line (default below); the Beam
version is the installed Python SDK's, since job server and SDK must be the same release.

When no jar can be had (no Java/Maven, or the registry does not serve the artifact),
`flink_job_server_jar` raises `FlinkUnavailable` with the reason; Flink tests skip on it
unless ``MUSICREP_REQUIRE_FLINK=1``, which turns the skip into a failure (for CI that must
prove Flink).
"""
from __future__ import annotations

import logging
import os
import pathlib
import re
import shutil
import subprocess

import apache_beam

_LOGGER = logging.getLogger(__name__)

# Flink 1.20 is Flink's long-term-support line and one of Beam 2.77's published job servers
# (PUBLISHED_FLINK_VERSIONS: 1.19, 1.20, 2.0, 2.1, 2.2); it runs on Java 17.
DEFAULT_FLINK_VERSION = "1.20"
MAVEN_FETCH_TIMEOUT_S = 600
DEFAULT_PARALLELISM = 2


class FlinkUnavailable(RuntimeError):
    """The Flink job-server jar (or the Java to run it) cannot be had on this machine."""


def flink_version() -> str:
    return os.environ.get("MUSICREP_FLINK_VERSION", DEFAULT_FLINK_VERSION)


def beam_version() -> str:
    return apache_beam.version.__version__


def job_server_artifact(*, flink: str | None = None, beam: str | None = None) -> tuple[str, str, str]:
    """(groupId, artifactId, version) of Beam's Flink job server for these versions."""
    return (
        "org.apache.beam",
        f"beam-runners-flink-{flink or flink_version()}-job-server",
        beam or beam_version(),
    )


def cache_dir() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("MUSICREP_CACHE_DIR", pathlib.Path.home() / ".cache" / "musicrep")
    )


def flink_required() -> bool:
    return os.environ.get("MUSICREP_REQUIRE_FLINK", "") not in ("", "0", "false", "False")


def flink_job_server_jar(*, flink: str | None = None, beam: str | None = None, fetch: bool = True) -> str:
    """Path of Beam's Flink job-server jar, fetched with Maven into the cache if missing.

    Raises:
        FlinkUnavailable: no Java on PATH, or the jar is neither cached nor fetchable.
    """
    if shutil.which("java") is None:
        raise FlinkUnavailable("no `java` on PATH: the Flink job server is a Java program")
    override = os.environ.get("MUSICREP_FLINK_JOB_SERVER_JAR")
    if override:
        if not os.path.isfile(override):
            raise FlinkUnavailable(f"MUSICREP_FLINK_JOB_SERVER_JAR={override!r} is not a file")
        return override
    group, artifact, version = job_server_artifact(flink=flink, beam=beam)
    file_name = f"{artifact}-{version}.jar"
    cached = cache_dir() / file_name
    if cached.is_file():
        return os.fspath(cached)
    in_m2 = (pathlib.Path.home() / ".m2" / "repository" / group.replace(".", "/") / artifact
             / version / file_name)
    if in_m2.is_file():
        return os.fspath(in_m2)
    if not fetch:
        raise FlinkUnavailable(f"{file_name} is not in {cache_dir()} nor in ~/.m2")
    return _fetch_with_maven(f"{group}:{artifact}:{version}", cached)


def _fetch_with_maven(coordinates: str, target: pathlib.Path) -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise FlinkUnavailable(f"no `mvn` on PATH to fetch {coordinates}")
    target.parent.mkdir(parents=True, exist_ok=True)
    _LOGGER.info("fetching %s into %s", coordinates, target.parent)
    command = [
        mvn, "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
        f"-Dartifact={coordinates}:jar", f"-DoutputDirectory={target.parent}",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=MAVEN_FETCH_TIMEOUT_S,
            stdin=subprocess.DEVNULL, check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise FlinkUnavailable(f"`mvn` did not fetch {coordinates} in {error.timeout} s") from error
    if done.returncode != 0 or not target.is_file():
        output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)  # colour codes
        errors = [line for line in output.splitlines() if "ERROR" in line]
        reason = errors[0].split(" -> [Help")[0] if errors else f"exit status {done.returncode}"
        raise FlinkUnavailable(f"Maven could not fetch {coordinates}: {reason}")
    return os.fspath(target)


def flink_pipeline_args(
    tmpdir: str | os.PathLike,
    *,
    parallelism: int = DEFAULT_PARALLELISM,
    environment_type: str = "LOOPBACK",
    flink_master: str = "[local]",
    jar: str | None = None,
) -> list[str]:
    """Beam options that run a pipeline on Flink's embedded cluster with this Python process
    as the SDK harness (LOOPBACK: no Docker, nothing to install on Flink's side).

    `tmpdir` receives the job server's artifact staging. Raises `FlinkUnavailable` (from
    `flink_job_server_jar`) when no jar can be had.
    """
    jar = jar or flink_job_server_jar()
    artifacts = pathlib.Path(tmpdir) / "flink-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    return [
        "--runner=FlinkRunner",
        f"--flink_master={flink_master}",
        f"--flink_version={flink_version()}",
        f"--flink_job_server_jar={jar}",
        f"--environment_type={environment_type}",
        f"--parallelism={parallelism}",
        f"--artifacts_dir={artifacts}",
    ]
