"""The settings of the jobs that run the model (embed, reembed): one set of options, turned
into a WindowSpec and an InferenceSpec in the launcher, so a bad value is a usage error
(exit 2) before any work starts."""
from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions

from musicrep.features.config import FeatureConfig
from musicrep.features.stream import check_time_budget
from musicrep.features.windows import AGGREGATES, LOG_MEL_ON, WindowSpec
from musicrep.model.engines import ENGINE_CHOICES, PRECISIONS
from musicrep.pipelines.features import add_time_budget_argument
from musicrep.pipelines.inference import InferenceSpec
from musicrep.pipelines.options import threads_per_worker


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Window placement and pooling (SPEC §4), batching, engine and precision: every
    option of the model's settings, so embed and reembed offer the same ones."""
    default = WindowSpec()
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
        "--batch-size",
        type=int,
        default=InferenceSpec.batch_size,
        help=f"windows per model call (default {InferenceSpec.batch_size})",
    )
    parser.add_argument(
        "--large-model", action="store_true", help="one model per machine shared by its worker processes (GPU workers)"
    )
    parser.add_argument("--model-copies", type=int, default=None, help="with --large-model: copies per machine")
    parser.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default=InferenceSpec.engine,
        help=f"inference engine (default {InferenceSpec.engine}: each worker picks for its hardware, "
        "OpenVINO for bf16 on a CPU with bf16 units, tf otherwise; the engine that ran is recorded in every row)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=InferenceSpec.precision,
        help="fp32, or bf16 on workers with bf16 units (AMX or AVX-512 BF16 CPUs; GPUs with --engine tf); "
        "refused elsewhere, and with --engine tf on a CPU (no faster than fp32 there). Recorded in every row.",
    )
    parser.add_argument(
        "--log-mel-on",
        choices=LOG_MEL_ON,
        default=default.log_mel_on,
        help="where the front end runs: cpu (default) or device (resampling, STFT, mel and log as TF ops in the "
        "model's graph, so a GPU worker's CPU only decodes; audio input only, engine tf; recorded in window_spec)",
    )
    add_time_budget_argument(parser)


def window_spec(args: argparse.Namespace, features: FeatureConfig) -> WindowSpec:
    """The WindowSpec the options ask for, checked against the model's frame grid."""
    spec = WindowSpec(
        window_s=args.window_s,
        hop_s=args.hop_s,
        max_windows=args.max_windows,
        aggregate=args.aggregate,
        max_duration_s=args.max_duration_s,
        log_mel_on=args.log_mel_on,
    )
    spec.frames(features)
    check_time_budget(args.time_budget_s)
    return spec


def inference_spec(args: argparse.Namespace, options: PipelineOptions) -> InferenceSpec:
    return InferenceSpec(
        batch_size=args.batch_size,
        engine=args.engine,
        precision=args.precision,
        large_model=args.large_model,
        model_copies=args.model_copies,
        cpu_threads=threads_per_worker(options),
    )
