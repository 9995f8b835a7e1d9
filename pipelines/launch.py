"""One launcher shape for the Beam jobs (features, embed, reembed):

    settings = EmbedSettings.from_argv(argv)       # parse + validate (pipelines.settings)
    options = make_pipeline_options(...)           # Beam's own option check
    pipeline = beam.Pipeline(options=options); build_pipeline(pipeline, ...)
    run_to_success(pipeline)                       # pipelines.commit
    commit                                          # manifest, or one Delta transaction
    → JobResult                                     # what `run` returns and the CLI prints

`to_directory` is that sequence for the jobs whose output is a directory committed by
its manifest; reembed follows it with a store commit instead.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterable

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from musicrep.contracts.layout import ERRORS_PREFIX
from musicrep.pipelines import commit


@dataclasses.dataclass(frozen=True)
class JobResult:
    """What one run of a job did. Track counts come from the committed files (what they
    hold), `counts` holds every total of the run (windows, carried rows, …)."""

    job: str
    run_id: str | None
    tracks_in: int
    tracks_out: int
    tracks_failed: int
    seconds: float
    committed: tuple[str, ...] = ()  # the committed files (features, embed)
    table_version: int | None = None  # reembed: the store's version after the run
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    text: str = ""  # what the command prints

    def summary(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class Committed:
    """A directory run after its commit: the manifest and the run's seconds."""

    manifest: dict[str, Any]
    seconds: float
    pipeline_result: Any

    def result(self, job: str, *, kind: str, text: str, counts: dict[str, int] | None = None) -> JobResult:
        """The JobResult of a run whose outputs of `kind` are one record per track written
        (every input is one of those or one dead letter)."""
        totals = self.manifest["counts"]
        written, failed = totals.get(kind, 0), totals.get(ERRORS_PREFIX, 0)
        return JobResult(
            job=job,
            run_id=self.manifest["run_id"],
            tracks_in=written + failed,
            tracks_out=written,
            tracks_failed=failed,
            seconds=self.seconds,
            committed=tuple(entry["name"] for entry in self.manifest["files"]),
            counts={**totals, **(counts or {})},
            text=text,
        )


def to_directory(
    job: str,
    *,
    output_dir: str,
    options: PipelineOptions,
    build: Callable[[beam.Pipeline, str], None],
    prefixes: Iterable[str],
    settings: dict[str, Any],
) -> Committed:
    """Builds the job (`build(pipeline, staging_dir)`) into a fresh staging folder of
    `output_dir`, runs it to success and commits it."""
    started = time.perf_counter()
    staged = commit.start_run(output_dir)
    pipeline = beam.Pipeline(options=options)
    build(pipeline, staged.staging_dir)
    result = commit.run_to_success(pipeline)
    manifest = commit.commit(staged, job=job, prefixes=prefixes, settings=settings)
    return Committed(manifest=manifest, seconds=time.perf_counter() - started, pipeline_result=result)
