"""The `musicrep` command: one subcommand per job.

Each subcommand lives in the module that implements it and exposes `run(argv)`, in the
style of Beam's examples (argparse + parse_known_args, the rest to PipelineOptions).
Modules are imported only when their subcommand runs, so `musicrep --help` stays fast
and does not import TensorFlow.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys

# subcommand -> (module with run(argv), one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth-catalog": ("musicrep.synth_catalog", "write a small labelled synthetic audio catalog"),
    "features": ("musicrep.pipelines.features", "Beam job: audio catalog -> log-mel TFRecord shards"),
    "model": ("musicrep.model.cli", "create, inspect and import SF-NFNet-F0 model exports"),
    "embed": ("musicrep.pipelines.embed", "Beam job: shards or audio -> one embedding per track (Parquet)"),
    "pretrain": ("musicrep.model.pretrain", "pre-train SF-NFNet (supervised BCE or SimCLR) on shards"),
    "probe": ("musicrep.probes.cli", "fit MLP probes on Parquet embeddings and report metrics"),
    "probe-suite": ("musicrep.probes.suite", "run several probes and print the paper's table"),
    "reembed": ("musicrep.pipelines.reembed", "incremental scheduled re-embedding into a store"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: musicrep COMMAND [ARGS...]", "", "commands:"]
    for name, (_, description) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {description}")
    lines += ["", "Run `musicrep COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from musicrep import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"musicrep: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    _configure_logging()
    module = importlib.import_module(COMMANDS[name][0])
    result = module.run(rest)
    return result if isinstance(result, int) else 0


def _configure_logging() -> None:
    # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) buries the progress
    # lines; workers inherit the variable, so it is set before anything imports TF.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Workers' own start-up warnings (no semi-persistent dir, no resource module) are
    # relayed through the job service and say nothing about the job.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
