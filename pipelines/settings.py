"""Each job's settings: parsed from its command line and validated once, here at the edge,
then carried to the workers as they are.

Nothing here imports Beam or TensorFlow, so a usage error (a bad number, a missing model
export, an input that names nothing) is one line and exit 2 within a second; the options
the job's parser does not take go to Beam, whose own check runs when the job module
builds its PipelineOptions. `musicrep.cli` builds these before it imports the job.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob as local_glob
import math
from typing import Any

from musicrep import fileio
from musicrep.contracts.shards import DEFAULT_GZIP_LEVEL
from musicrep.contracts.sidecar import ExportMetadata, read_metadata
from musicrep.contracts.tracks import is_manifest
from musicrep.errors import ConfigError
from musicrep.contracts.window_spec import AGGREGATES, LOG_MEL_ON, WindowSpec
from musicrep.model.engines import (
    AUTO_ENGINE, ENGINE_CHOICES, PRECISIONS, check_front_end, check_names, nvidia_devices, resolve_engine,
)
from musicrep.store.options import storage_options

SHARD_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """How the model runs. `engine` and `precision` are written into every output row.

    Attributes:
        batch_size: windows per model call (the last batch of a bundle is zero-padded).
        engine: "auto" (picked for the workers' hardware: musicrep.model.engines.
            resolve_engine), "tf" or "openvino". Rows record the engine that ran.
        precision: "fp32" or "bf16"; bf16 needs bf16 hardware on the worker (AMX or
            AVX-512 BF16 on a CPU; a GPU with engine "tf") and is refused elsewhere.
        large_model: one model per machine shared by its worker processes (GPU workers).
        model_copies: with large_model, copies per machine (default 1).
        cpu_threads: threads of one model on a CPU worker (default: the engine's).
        jit_compile: engine "tf" only: XLA-compile the forward.
        hardware_checked: the launcher resolved the engine and found the bf16 units
            (its workers run on its machine), so the workers do not look again; remote
            workers resolve and check on their own hardware.
    """

    batch_size: int = 32
    engine: str = AUTO_ENGINE
    precision: str = "fp32"
    large_model: bool = False
    model_copies: int | None = None
    cpu_threads: int | None = None
    jit_compile: bool = False
    hardware_checked: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        if self.model_copies is not None and self.model_copies < 1:
            raise ConfigError(f"model copies must be >= 1 (or unset for 1), got {self.model_copies}")
        if self.model_copies is not None and not self.large_model:
            raise ConfigError("model copies are copies per machine of a --large-model; add --large-model")
        check_names(engine=self.engine, precision=self.precision, allow_auto=True)
        if self.jit_compile and self.engine not in ("tf", AUTO_ENGINE):
            raise ConfigError(f"jit_compile is a TensorFlow option; engine is {self.engine!r}")


@dataclasses.dataclass(frozen=True)
class FeaturesSettings:
    """The features job: `source` (glob or manifest) → log-mel shards in `output`."""

    source: str
    output: str
    shards: int = 0
    dtype: str = "float16"
    time_budget_s: float | None = None
    gzip_level: int = DEFAULT_GZIP_LEVEL
    beam_args: tuple[str, ...] = ()

    @classmethod
    def from_argv(cls, argv: list[str] | None) -> FeaturesSettings:
        parser = argparse.ArgumentParser(
            prog="musicrep features",
            description="Decode an audio catalog and write 96-bin log-mel TFRecord shards (SPEC §1). "
            "Options not listed here go to Beam (e.g. --runner, --direct_num_workers, --project).",
        )
        parser.add_argument(
            "--input",
            required=True,
            help="glob of audio files (local or gs://, e.g. 'catalog/**/*.mp3') or a manifest "
            ".csv/.parquet with columns track_id,uri",
        )
        parser.add_argument("--output", required=True, help="output directory (local or gs://)")
        parser.add_argument(
            "--shards", type=int, default=0, help="number of feature shards (default 0: the runner decides)"
        )
        parser.add_argument(
            "--dtype", choices=SHARD_DTYPES, default="float16", help="log-mel storage type (default float16)"
        )
        _add_time_budget(parser)
        parser.add_argument(
            "--gzip-level", type=int, default=DEFAULT_GZIP_LEVEL, metavar="N",
            help=f"gzip level of the shards: 0 stored, 1-3 ISA-L's igzip, 4-9 zlib's (default {DEFAULT_GZIP_LEVEL}: "
            "a tenth of the CPU of zlib's 6 for 0.4%% larger files; every level reads the same)",
        )
        args, beam_args = parser.parse_known_args(argv)
        _check_count("--shards", args.shards, minimum=0)
        check_time_budget(args.time_budget_s)
        if args.gzip_level not in range(10):
            raise ConfigError(f"--gzip-level must be 0 (stored, no compression) to 9, got {args.gzip_level}")
        check_source(args.input)
        return cls(args.input, args.output, args.shards, args.dtype, args.time_budget_s, args.gzip_level, tuple(beam_args))

    def record(self) -> dict[str, Any]:
        """What the manifest records of the run's settings."""
        return {"input": self.source, "output": self.output, "shards": self.shards, "dtype": self.dtype,
                "time_budget_s": self.time_budget_s, "gzip_level": self.gzip_level}


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """What embed and reembed share: the export (its sidecar read once), how tracks
    become windows and one vector, how the model runs, and the per-track time budget."""

    model_uri: str
    metadata: ExportMetadata
    windows: WindowSpec
    inference: InferenceSpec
    time_budget_s: float | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Every option of the model's settings, so embed and reembed offer the same ones."""
        default, spec = WindowSpec(), InferenceSpec()
        parser.add_argument("--model", required=True, help="model export directory (local or gs://)")
        parser.add_argument(
            "--window-s", type=float, default=default.window_s, help=f"window length in seconds (default {default.window_s:g})"
        )
        parser.add_argument(
            "--hop-s",
            type=float,
            default=default.hop_s,
            help=f"hop between window centres in seconds (default {default.hop_s:g} = 0.5 Hz)",
        )
        parser.add_argument("--max-windows", type=int, default=None, help="embed at most this many windows per track")
        parser.add_argument(
            "--max-duration-s",
            type=float,
            default=None,
            metavar="S",
            help="embed only the first S seconds of each track (with --audio the rest is never decoded; "
            "recorded in each row's window_spec and duration_s; default: the whole track)",
        )
        parser.add_argument(
            "--aggregate", choices=AGGREGATES, default=default.aggregate, help=f"window pooling (default {default.aggregate})"
        )
        parser.add_argument(
            "--batch-size", type=int, default=spec.batch_size, help=f"windows per model call (default {spec.batch_size})"
        )
        parser.add_argument(
            "--large-model", action="store_true", help="one model per machine shared by its worker processes (GPU workers)"
        )
        parser.add_argument("--model-copies", type=int, default=None, help="with --large-model: copies per machine (default 1)")
        parser.add_argument(
            "--engine",
            choices=ENGINE_CHOICES,
            default=spec.engine,
            help=f"inference engine (default {spec.engine}: picked for the workers' hardware, OpenVINO for bf16 on "
            "a CPU with bf16 units and for fp32 on a CPU without AVX-512, tf otherwise; the engine that ran is "
            "recorded in every row)",
        )
        parser.add_argument(
            "--precision",
            choices=PRECISIONS,
            default=spec.precision,
            help="fp32, or bf16 on workers with bf16 units (AMX or AVX-512 BF16 CPUs; GPUs with --engine tf); "
            "refused elsewhere, and with --engine tf on a CPU (no faster than fp32 there). Recorded in every row.",
        )
        parser.add_argument(
            "--log-mel-on",
            choices=LOG_MEL_ON,
            default=default.log_mel_on,
            help="where the front end runs: cpu (default) or device (resampling, STFT, mel and log as TF ops in the "
            "model's graph, so a GPU worker's CPU only decodes; audio input only, engine tf or auto; recorded in "
            "window_spec)",
        )
        _add_time_budget(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ModelSettings:
        """Validated settings: finite numbers in range, the export's sidecar read."""
        check_time_budget(args.time_budget_s)
        inference = InferenceSpec(
            batch_size=args.batch_size,
            engine=args.engine,
            precision=args.precision,
            large_model=args.large_model,
            model_copies=args.model_copies,
        )
        windows = WindowSpec(
            window_s=args.window_s,
            hop_s=args.hop_s,
            max_windows=args.max_windows,
            aggregate=args.aggregate,
            max_duration_s=args.max_duration_s,
            log_mel_on=args.log_mel_on,
        )
        check_front_end(engine=inference.engine, log_mel_on=windows.log_mel_on)
        metadata = read_metadata(args.model)
        windows.frames(metadata.features)  # refuses windows that round to no frame
        return cls(args.model, metadata, windows, inference, args.time_budget_s)

    def for_workers(self, options) -> InferenceSpec:
        """The InferenceSpec the workers get, for these PipelineOptions: each worker's share
        of the cores on the embedded runner and, whenever the workers run on this machine,
        the engine resolved and bf16 hardware checked here (so no staging starts for a run
        its workers would refuse, and the rows name the engine the run asked for)."""
        from musicrep.pipelines.options import threads_per_worker, workers_are_local

        spec = dataclasses.replace(self.inference, cpu_threads=threads_per_worker(options))
        if not workers_are_local(options):
            return spec
        engine = resolve_engine(spec.engine, spec.precision, log_mel_on=self.windows.log_mel_on, gpu=bool(nvidia_devices()))
        return dataclasses.replace(spec, engine=engine, hardware_checked=True)

    def record(self) -> dict[str, Any]:
        return {"model": self.model_uri, "model_id": self.metadata.model_id, "window_spec": self.windows.key(self.metadata.features),
                **dataclasses.asdict(self.inference), "time_budget_s": self.time_budget_s}


@dataclasses.dataclass(frozen=True)
class EmbedSettings:
    """The embed job: shards (`features`) or audio (`audio`) → embeddings in `output`."""

    model: ModelSettings
    output: str
    features: str | None = None
    audio: str | None = None
    per_window: bool = False
    shards: int = 0
    skip_existing: str | None = None
    beam_args: tuple[str, ...] = ()

    @classmethod
    def from_argv(cls, argv: list[str] | None) -> EmbedSettings:
        parser = argparse.ArgumentParser(
            prog="musicrep embed",
            description="Embed every track with an SF-NFNet export: windows (SPEC §4) → model → "
            "per-track average → Parquet. Options not listed here go to Beam.",
        )
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--features", help="the features job's output directory (its committed shards) or a glob of feature shards"
        )
        source.add_argument(
            "--audio", help="glob of audio files or a track_id,uri manifest: decode + log-mel in the same job"
        )
        parser.add_argument("--output", required=True, help="output directory (local or gs://)")
        parser.add_argument("--per-window", action="store_true", help="also write DIR/windows-*.parquet")
        parser.add_argument("--shards", type=int, default=0, help="embedding Parquet files (default: the runner decides)")
        parser.add_argument(
            "--skip-existing",
            metavar="DIR_OR_PATTERN",
            help="earlier embeddings (an embed output directory or a Parquet glob): unchanged tracks "
            "are copied from them instead of recomputed",
        )
        ModelSettings.add_arguments(parser)
        args, beam_args = parser.parse_known_args(argv)
        _check_count("--shards", args.shards, minimum=0)
        _check_count("--max-windows", args.max_windows, minimum=1)
        model = ModelSettings.from_args(args)
        if args.audio:
            check_source(args.audio)
        elif model.windows.log_mel_on == "device":
            raise ConfigError("--log-mel-on device needs --audio: feature shards hold the log-mel already")
        return cls(model, args.output, args.features, args.audio, args.per_window, args.shards, args.skip_existing,
                   tuple(beam_args))

    def record(self) -> dict[str, Any]:
        return {"features": self.features, "audio": self.audio, "output": self.output, "per_window": self.per_window,
                "shards": self.shards, "skip_existing": self.skip_existing, **self.model.record()}


@dataclasses.dataclass(frozen=True)
class ReembedSettings:
    """The reembed job: the catalog `catalog` → the Delta store at `store`."""

    model: ModelSettings
    catalog: str
    store: str
    verify_content: bool = False
    storage_options: tuple[tuple[str, str], ...] = ()
    beam_args: tuple[str, ...] = ()

    @classmethod
    def from_argv(cls, argv: list[str] | None) -> ReembedSettings:
        parser = argparse.ArgumentParser(
            prog="musicrep reembed",
            description="Incrementally re-embed a catalog into a Delta Lake store: only new, changed "
            "(size/mtime/generation) or stale (model, front end, window settings, engine, precision) tracks are "
            "read and embedded; one Delta commit per run. Options not listed here go to Beam.",
        )
        parser.add_argument("--catalog", required=True, help="glob of audio files (local or gs://)")
        parser.add_argument("--store", required=True, help="the store: a Delta table directory (local or gs://)")
        ModelSettings.add_arguments(parser)
        parser.add_argument(
            "--verify-content",
            action="store_true",
            help="read and hash every object, not only new or changed ones (for untrusted object metadata)",
        )
        parser.add_argument(
            "--storage-option",
            action="append",
            metavar="KEY=VALUE",
            help="delta-rs object-store option for the store (repeatable; GCS uses Application Default Credentials)",
        )
        args, beam_args = parser.parse_known_args(argv)
        _check_count("--max-windows", args.max_windows, minimum=1)
        model = ModelSettings.from_args(args)
        if is_manifest(args.catalog):
            raise ConfigError(
                f"reembed needs a glob for --catalog (it compares the listing's size and modification "
                f"time with the store), got the manifest {args.catalog!r}"
            )
        return cls(model, args.catalog, args.store, args.verify_content,
                   tuple(sorted(storage_options(args.storage_option).items())), tuple(beam_args))


def check_source(source: str) -> None:
    """Refuses an input that names nothing: a manifest that is missing or lacks the
    track_id/uri columns, or a glob that matches no file."""
    if is_manifest(source):
        if not fileio.exists(source):
            raise ConfigError(f"manifest {source!r} does not exist")
        if source.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            with fileio.open_read(source) as handle:
                names = pq.read_schema(handle).names
            missing = {"track_id", "uri"} - set(names)
            if missing:
                raise ConfigError(f"manifest {source!r} lacks column(s) {sorted(missing)}; columns are {names}")
        return
    found = local_glob.glob(source, recursive=True) if fileio.is_local(source) else fileio.glob(source)
    if not found:
        raise ConfigError(f"no files match {source!r}")


def check_time_budget(budget_s: float | None) -> None:
    """The per-track time budget, refused unless None or a finite number > 0."""
    if budget_s is not None and not 0 < budget_s < math.inf:
        raise ConfigError(f"the per-track time budget must be a finite number > 0 s (or unset), got {budget_s}")


def _check_count(flag: str, value: int | None, *, minimum: int) -> None:
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be >= {minimum}, got {value}")


def _add_time_budget(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        metavar="S",
        help="seconds of work one track may take (read, decode, log-mel and, in embed, the model); a "
        "track that takes longer, or hangs, is a dead letter 'timeout' with the time spent and the worker "
        "moves on (default: no budget, so nothing cuts a hang; a 10-hour track takes ~6 min of one core)",
    )

