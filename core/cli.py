"""The `musicrep` command: one subcommand per job.

Each subcommand lives in the module that implements it and exposes `run(argv)`, in the
style of Beam's examples (argparse + parse_known_args, the rest to PipelineOptions).
Modules are imported only when their subcommand runs, so `musicrep --help` stays fast
and does not import TensorFlow. The Beam jobs' settings are parsed and validated
(musicrep.pipelines.settings) before their module, Beam or TensorFlow is imported, so a
usage error answers at once; `run` returns a result whose text the command prints.
"""
from __future__ import annotations

import gc
import importlib
import logging
import sys

from musicrep import native_logging
from musicrep.errors import MusicrepError

# Commands whose settings are parsed and validated (`from_argv`) before their module, with
# its Beam or TensorFlow imports, is loaded: (module, settings class).
SETTINGS = {
    "features": ("musicrep.pipelines.settings", "FeaturesSettings"),
    "embed": ("musicrep.pipelines.settings", "EmbedSettings"),
    "reembed": ("musicrep.pipelines.settings", "ReembedSettings"),
    "probe": ("musicrep.probes.config", "ProbeConfig"),
}
# subcommand -> (module with run(argv), one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth-catalog": ("musicrep.testing", "write a small labelled synthetic audio catalog"),
    "features": ("musicrep.pipelines.features", "Beam job: audio catalog -> log-mel TFRecord shards"),
    "model": ("musicrep.model.cli", "create, inspect and import SF-NFNet-F0 model exports"),
    "embed": ("musicrep.pipelines.embed", "Beam job: shards or audio -> one embedding per track (Parquet)"),
    "pretrain": ("musicrep.model.pretrain", "pre-train SF-NFNet (supervised BCE or SimCLR) on shards"),
    "probe": ("musicrep.probes.cli", "fit MLP probes on Parquet embeddings and report metrics"),
    "probe-suite": ("musicrep.probes.suite", "run several probes and print the paper's table"),
    "reembed": ("musicrep.pipelines.reembed", "incremental scheduled re-embedding into a store"),
    "store": ("musicrep.store.cli", "the reembed store (Delta table): compact, vacuum, history, import"),
    "flink-cluster": ("musicrep.flink_cluster", "fetch, start and stop a local standalone Flink cluster"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: musicrep [--verbose] COMMAND [ARGS...]", "", "commands:"]
    for name, (_, description) in COMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {description}")
    lines += [
        "",
        "  --verbose  (before or after COMMAND) keep TensorFlow's C++ start-up lines and show debug logs",
        "",
        "Run `musicrep COMMAND --help` for the options of one command.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, owns_process: bool = False) -> int:
    """Runs one command; its status, or 2 with one line on stderr for a refused input.
    `owns_process`: the process ends when the command does (the `musicrep` script).

    Errors musicrep raises on purpose (`MusicrepError`: bad options, paths, settings, data)
    are a message for the user; any other exception is a bug and keeps its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # Taken before or after the command name (`musicrep --verbose embed`, `musicrep embed
    # --verbose`): no job has an option of that name, and Beam would refuse it.
    verbose = "--verbose" in argv
    argv = [arg for arg in argv if arg != "--verbose"]
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
    _configure_logging(verbose=verbose)
    try:
        if name in SETTINGS:
            home, settings = SETTINGS[name]
            rest = getattr(importlib.import_module(home), settings).from_argv(rest)
        module = importlib.import_module(COMMANDS[name][0])
        if owns_process:
            # The imports (Beam's alone are ~2M objects) live until the process ends with
            # the command: frozen, the collector skips them during the job and at exit,
            # where examining them took 0.3 s of each command (Intel Xeon). Not in a
            # longer-lived caller (tests), which would keep whatever garbage it froze.
            gc.freeze()
        result = module.run(rest)
    except MusicrepError as error:
        print(f"musicrep {name}: {error}", file=sys.stderr)
        return 2
    return exit_status(result)


def exit_status(result: object) -> int:
    """A launcher's return value as the exit status: an int is one; a result object (a
    frozen dataclass with `summary()`) is printed as its summary and means success."""
    if isinstance(result, int):
        return result
    if result is not None:
        print(result.summary())
    return 0


def _configure_logging(*, verbose: bool) -> None:
    if verbose:
        # Before the command's module imports TensorFlow; workers inherit the environment.
        native_logging.set_verbose()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.WARNING)
    # Workers' own start-up warnings (no semi-persistent dir, no resource module) are
    # relayed through the job service and say nothing about the job.
    if not verbose:
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)


def console() -> None:
    """The `musicrep` script (and `python -m musicrep.cli`): one command, then exit."""
    sys.exit(main(owns_process=True))


if __name__ == "__main__":
    console()
