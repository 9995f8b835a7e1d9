"""How a job's outputs become visible: the pipeline writes, the launcher commits.

    run = start_run(output_dir)                   # a fresh run id
    build_pipeline(..., output_dir=run.staging_dir)   # the pipeline writes only there
    result = run_to_success(pipeline)           # raises RunFailed unless it succeeded
    manifest = commit(run, job="features", prefixes=("features", "errors"), settings=...)

A pipeline writes only into DIR/_staging/RUN_ID/ (Beam's temporary folders live there
too) and deletes nothing. After it succeeded, `commit` (1) moves the staged files to
names that carry the run id (`features-RUN_ID-00000-of-00004.tfrecord.gz`), so they
never collide with the previous run's; (2) writes DIR/_MANIFEST.json in one atomic write
(a rename on local disks, one object upload on gs://) — the switch; (3) deletes the
files with the job's prefixes that the new manifest does not list and every staging
folder. A run killed at any moment leaves the previous manifest and all its files in
place; the next run's commit removes what the killed one left.

One run at a time per output directory: a commit removes every staging folder.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import glob as local_glob
import json
import logging
import os
import secrets
import sys
import time
from typing import Any, Callable, Iterable, Mapping

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.runners.runner import PipelineResult, PipelineState

from musicrep import fileio
from musicrep.contracts.layout import STAGING_DIR
from musicrep.errors import MusicrepError
from musicrep.manifest import MANIFEST_NAME, MANIFEST_VERSION, committed_files
from musicrep.pipelines import harness
from musicrep.pipelines.outputs import WriteTotals, read_side_total

logger = logging.getLogger(__name__)

TOTALS_PREFIX = "_total"
# Test-only: makes the process that reaches the named point print its pid to stderr and
# sleep, so a test can kill it there: before_commit, mid_commit, before_cleanup (the
# launcher), track:ID (the worker computing that track's features, mid-write).
PAUSE_ENV = "MUSICREP_TEST_PAUSE_AT"
PAUSE_ONCE_ENV = "MUSICREP_TEST_PAUSE_ONCE"


class RunFailed(MusicrepError):
    """The pipeline did not finish successfully; nothing was committed."""


class CommitError(MusicrepError):
    """The staged files disagree with what the pipeline counted; nothing was committed."""


@dataclasses.dataclass(frozen=True)
class StagedRun:
    """One run of a job into `output_dir`; the pipeline writes into `staging_dir`."""

    output_dir: str
    run_id: str

    @property
    def staging_dir(self) -> str:
        return fileio.join(self.output_dir, STAGING_DIR, self.run_id)


def start_run(output_dir: str) -> StagedRun:
    """A new run id: UTC time (sorts by start) and a random suffix (two launchers in one second)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return StagedRun(output_dir=output_dir.rstrip("/"), run_id=f"{stamp}-{secrets.token_hex(3)}")


def write_totals(staging_dir: str, values: Mapping[str, Callable[[Any], int]] | None = None) -> WriteTotals:
    """{name: PCollection} → STAGING/_total-NAME.txt each: the PCollection's elements
    counted (or `values[name](element)` summed), totals computed from the data itself, so
    the commit's counts do not depend on how a runner reports metrics."""
    return WriteTotals(functools.partial(_total_path, staging_dir), values)


def _total_path(staging_dir: str, name: str) -> str:
    return fileio.join(staging_dir, f"{TOTALS_PREFIX}-{name}.txt")


def run_to_success(pipeline: beam.Pipeline) -> PipelineResult:
    """Runs `pipeline` to its end; raises RunFailed unless it succeeded. On Flink a
    LOOPBACK harness is served by `harness.loopback` (TaskManagers share it safely)."""
    with harness.loopback(pipeline.options):
        result = pipeline.run()
        state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise RunFailed(f"the pipeline ended in state {state}; nothing was committed, the previous output is unchanged")
    return result


def commit(run: StagedRun, *, job: str, prefixes: Iterable[str], settings: dict[str, Any]) -> dict[str, Any]:
    """Moves the run's staged files to their final names and publishes the manifest.

    `prefixes`: every file prefix the job may write (also those this run did not use,
    so an earlier run's files of that kind are removed). Returns the manifest.
    """
    prefixes = tuple(prefixes)
    totals = _read_totals(run.staging_dir)
    staged = [path for prefix in prefixes for path in fileio.glob(fileio.join(run.staging_dir, f"{prefix}-*-of-*"))]
    entries = [_describe(path, _kind(path, prefixes)) for path in staged]
    _check_totals(entries, totals)
    finals = [
        fileio.join(run.output_dir, _final_name(fileio.basename(path), entry["kind"], run.run_id))
        for path, entry in zip(staged, entries)
    ]
    pause_at("before_commit")
    half = len(staged) // 2
    fileio.rename(staged[:half], finals[:half])
    pause_at("mid_commit")
    fileio.rename(staged[half:], finals[half:])
    manifest = {
        "version": MANIFEST_VERSION,
        "run_id": run.run_id,
        "job": job,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "settings": settings,
        "counts": totals,
        "files": sorted(
            ({**entry, "name": fileio.basename(final)} for entry, final in zip(entries, finals)),
            key=lambda entry: entry["name"],
        ),
    }
    fileio.write_text(fileio.join(run.output_dir, MANIFEST_NAME), json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    pause_at("before_cleanup")
    remove_uncommitted(run.output_dir, prefixes, manifest)
    return manifest


def remove_uncommitted(output_dir: str, prefixes: Iterable[str], manifest: dict[str, Any]) -> list[str]:
    """Deletes the files with `prefixes` that `manifest` does not list (earlier runs,
    killed commits), every staging folder and Beam temp folders left in `output_dir`."""
    keep = set(committed_files(manifest, output_dir))
    stale = [
        path
        for prefix in prefixes
        for path in fileio.glob(fileio.join(output_dir, f"{prefix}-*"))
        if path not in keep
    ]
    fileio.delete(stale)
    for folder in [fileio.join(output_dir, STAGING_DIR)] + _beam_temp_folders(output_dir):
        fileio.remove_tree(folder)
    if stale:
        logger.info("removed %d file(s) of earlier runs from %s", len(stale), output_dir)
    return stale


def _beam_temp_folders(output_dir: str) -> list[str]:
    # Left in the output directory itself by runs from before staging existed. Object
    # stores have no folders: remove_tree takes the pattern itself there.
    if fileio.is_local(output_dir):
        return local_glob.glob(os.path.join(output_dir, "beam-temp-*"))
    return [fileio.join(output_dir, "beam-temp-*")]


def _kind(path: str, prefixes: tuple[str, ...]) -> str:
    name = fileio.basename(path)
    return next(prefix for prefix in prefixes if name.startswith(f"{prefix}-"))


def _final_name(staged_name: str, kind: str, run_id: str) -> str:
    # features-00000-of-00004.tfrecord.gz → features-RUN_ID-00000-of-00004.tfrecord.gz
    return f"{kind}-{run_id}-{staged_name[len(kind) + 1:]}"


def _describe(path: str, kind: str) -> dict[str, Any]:
    (info,) = fileio.list_files(path)
    return {"kind": kind, "size_bytes": info.size_bytes, "records": count_records(path)}


def count_records(path: str) -> int | None:
    """Records of a Parquet file (its footer) or JSON lines file; None for TFRecord shards,
    whose count would need the whole file decompressed (their totals come from the run)."""
    if path.endswith(".parquet"):
        with fileio.open_read(path) as handle:
            return pq.ParquetFile(handle).metadata.num_rows
    if path.endswith(".jsonl"):
        return sum(1 for line in fileio.read_text(path).splitlines() if line.strip())
    return None


def _read_totals(staging_dir: str) -> dict[str, int]:
    totals = {}
    for path in fileio.glob(fileio.join(staging_dir, f"{TOTALS_PREFIX}-*.txt")):
        name = fileio.basename(path)[len(TOTALS_PREFIX) + 1 : -len(".txt")]
        totals[name] = read_side_total(path)
    return totals


def _check_totals(entries: list[dict[str, Any]], totals: dict[str, int]) -> None:
    by_kind: dict[str, int] = {}
    for entry in entries:
        if entry["records"] is not None:
            by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0) + entry["records"]
    for kind, records in by_kind.items():
        if kind in totals and totals[kind] != records:
            raise CommitError(f"the run counted {totals[kind]} {kind} records but its files hold {records}")


def pause_at(point: str) -> None:
    """Test-only hook (see PAUSE_ENV); does nothing unless the variable names `point`.

    With PAUSE_ONCE_ENV naming a file, only the first process to reach the point (the one
    that creates the file, and writes its pid there) pauses: a job that a runner restarts
    after the kill runs on.
    """
    if os.environ.get(PAUSE_ENV) != point:
        return
    once = os.environ.get(PAUSE_ONCE_ENV)
    if once:
        mine = f"{once}.{os.getpid()}"
        with open(mine, "w", encoding="utf-8") as handle:
            handle.write(str(os.getpid()))
        try:
            os.link(mine, once)  # atomic and exclusive: the file appears with the pid in it
        except FileExistsError:
            return
        finally:
            os.remove(mine)
    print(f"{PAUSE_ENV}: pid {os.getpid()} paused at {point}", file=sys.stderr, flush=True)
    time.sleep(3600)
