"""Pipeline options and run summaries shared by every Beam job.

Without `--runner`, jobs run on Beam's Python FnApiRunner in multi-processing mode with
one worker per core. `--runner=DirectRunner` runs them on Prism when it can (Beam's
portable local runner, a Go binary Beam downloads at run time, which fails offline);
`--runner=PrismRunner` always does. For both, a locally built binary is used when
--prism_location is not given: $MUSICREP_PRISM, else `prism` in Go's bin folder
($GOBIN, $GOPATH/bin, ~/go/bin), where `go install .../cmd/prism@v2.77.0` puts it.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    SetupOptions,
    StandardOptions,
    _BeamArgumentParser,
)
from apache_beam.runners.runner import PipelineResult

from musicrep.contracts.layout import METRICS_NAMESPACE
from musicrep.errors import ConfigError

logger = logging.getLogger(__name__)

EMBEDDED_RUNNER = "FnApiRunner"
PRISM_RUNNERS = ("DirectRunner", "PrismRunner")
# Runners that cannot run these jobs, and why (checked before any work starts).
REFUSED_RUNNERS = {
    "DaskRunner": "Beam's DaskRunner does not separate tagged outputs (our dead letters), has no "
    "translation for beam.io.Read and reports no metrics; use the default runner, PrismRunner, "
    "FlinkRunner or DataflowRunner",
}


def check_beam_args(beam_args: list[str]) -> None:
    """Refuses (ConfigError) what neither the job's parser nor any Beam option class takes.

    Beam itself only logs "Discarding unparseable args" and runs on, so a typo such as
    `--hopp-s 1` would be ignored silently. This builds the parser Beam builds in
    `PipelineOptions.get_all_options` (every imported PipelineOptions subclass, no
    abbreviations) and names each flag it cannot take, with Beam's closest option.
    """
    parser = _BeamArgumentParser(allow_abbrev=False, exit_on_error=False, add_help=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    try:
        _, unknown = parser.parse_known_args(beam_args)
    except argparse.ArgumentError as error:
        raise ConfigError(f"bad pipeline option: {error}") from None
    if not unknown:
        return
    flags = [arg for arg in unknown if arg.startswith("-")] or unknown
    known = [option for action in parser._actions for option in action.option_strings]
    described = []
    for flag in flags:
        name = flag.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        described.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise ConfigError(
        f"unknown option(s): {', '.join(described)}; neither this command (see --help) "
        "nor Beam's pipeline options take them"
    )


def flag_given(beam_args: list[str], flag: str) -> bool:
    """Whether `flag` (e.g. "--direct_num_workers") is among the Beam arguments, as
    `--flag value` or `--flag=value`."""
    return any(arg == flag or arg.startswith(flag + "=") for arg in beam_args)


def make_pipeline_options(
    beam_args: list[str], *, default_workers: int | None = None, default_mode: str = "multi_processing"
) -> PipelineOptions:
    """PipelineOptions from the arguments argparse did not take, with the offline default.

    `default_workers`: workers of the embedded runner unless --direct_num_workers says
    otherwise (default: one per core). `default_mode`: how they run unless
    --direct_running_mode says otherwise: "multi_processing" (a process each) or
    "multi_threading" (threads of the launcher, for a job whose heavy work already runs
    in processes of its own).
    """
    check_beam_args(beam_args)
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    runner_name = str(standard.runner or "").rsplit(".", 1)[-1]
    if runner_name in REFUSED_RUNNERS:
        raise ConfigError(f"--runner={standard.runner} is refused: {REFUSED_RUNNERS[runner_name]}")
    if runner_name in PRISM_RUNNERS:
        prism = options.view_as(PrismRunnerOptions)
        prism.prism_location = prism.prism_location or local_prism_binary()
    if standard.runner is None:
        standard.runner = EMBEDDED_RUNNER
        direct = options.view_as(DirectOptions)
        if not flag_given(beam_args, "--direct_running_mode"):
            direct.direct_running_mode = default_mode
        # DirectOptions defaults to 1 worker, so only an explicit flag may override ours.
        if not flag_given(beam_args, "--direct_num_workers"):
            direct.direct_num_workers = default_workers or os.cpu_count() or 1
    # Our DoFns live in the installed package, so workers import them; pickling the
    # launcher's __main__ would only drag unrelated state along.
    options.view_as(SetupOptions).save_main_session = False
    return options


def local_prism_binary() -> str | None:
    """A Prism binary on this machine ($MUSICREP_PRISM, else Go's bin folder), or None."""
    if os.environ.get("MUSICREP_PRISM"):
        return os.environ["MUSICREP_PRISM"]
    folders = [os.environ.get("GOBIN"), os.path.join(os.environ.get("GOPATH") or os.path.expanduser("~/go"), "bin")]
    for folder in filter(None, folders):
        path = os.path.join(folder, "prism")
        if os.access(path, os.X_OK):
            return path
    return None


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


def workers_are_local(options: PipelineOptions) -> bool:
    """Whether the job's SDK workers run on this machine: the embedded runner, Prism, or
    any runner with LOOPBACK workers (in the launcher's own process)."""
    runner = str(options.view_as(StandardOptions).runner or EMBEDDED_RUNNER).rsplit(".", 1)[-1]
    environment = options.view_as(PortableOptions).environment_type
    return runner in (EMBEDDED_RUNNER, *PRISM_RUNNERS) or str(environment).upper() == "LOOPBACK"


def counter_values(result: PipelineResult) -> dict[str, int]:
    """Committed (or, where the runner has none, attempted) counters of our namespace."""
    values: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        values[counter.key.metric.name] = values.get(counter.key.metric.name, 0) + int(value or 0)
    return values
