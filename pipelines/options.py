"""Pipeline options and run summaries shared by every Beam job.

Without `--runner`, jobs run on Beam's Python FnApiRunner in multi-processing mode with
one worker per core. We never fall through to the DirectRunner: since Beam 2.68 it first
tries Prism, a Go binary downloaded at run time, which fails offline and changes
semantics silently when it does work.
"""
from __future__ import annotations

import logging
import os

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)
from apache_beam.runners.runner import PipelineResult

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "musicrep"
EMBEDDED_RUNNER = "FnApiRunner"


def make_pipeline_options(beam_args: list[str], *, default_workers: int | None = None) -> PipelineOptions:
    """PipelineOptions from the arguments argparse did not take, with the offline default.

    `default_workers`: worker processes of the embedded runner unless --direct_num_workers
    says otherwise (default: one per core).
    """
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        standard.runner = EMBEDDED_RUNNER
        direct = options.view_as(DirectOptions)
        if not any(arg.startswith("--direct_running_mode") for arg in beam_args):
            direct.direct_running_mode = "multi_processing"
        # DirectOptions defaults to 1 worker, so only an explicit flag may override ours.
        if not any(arg.startswith("--direct_num_workers") for arg in beam_args):
            direct.direct_num_workers = default_workers or os.cpu_count() or 1
    # Our DoFns live in the installed package, so workers import them; pickling the
    # launcher's __main__ would only drag unrelated state along.
    options.view_as(SetupOptions).save_main_session = False
    return options


def threads_per_worker(options: PipelineOptions) -> int | None:
    """Cores per worker process on the embedded multi-process runner, None elsewhere.

    TensorFlow sizes its thread pools to the whole machine in every process; with one
    worker per core that oversubscribes the CPU (measured: half the throughput of a
    single process with the same model), so such workers get their share of the cores.
    """
    direct = options.view_as(DirectOptions)
    if options.view_as(StandardOptions).runner != EMBEDDED_RUNNER or direct.direct_running_mode != "multi_processing":
        return None
    return max(1, (os.cpu_count() or 1) // max(1, direct.direct_num_workers))


def counter_values(result: PipelineResult) -> dict[str, int]:
    """Committed (or, where the runner has none, attempted) counters of our namespace."""
    values: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value or 0)
    return values
