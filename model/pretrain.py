"""`musicrep pretrain simclr|supervised`: pre-train SF-NFNet on log-mel shards (SPEC §3).

    musicrep pretrain simclr --features 'shards/features-*.tfrecord.gz' --config tiny \\
        --batch-size 32 --steps 500 --warmup-steps 50 --output runs/simclr-tiny
    musicrep embed --model runs/simclr-tiny/export ...

Defaults are the paper's (F0, 200k steps, 5k warm-up, peak LR 2e-4, batch 512 supervised /
1920 pairs SimCLR, mixup on, positives < 5 s apart). `--resume` continues the run stored in
--output with its own config.json; a directory holding this very config and a checkpoint
is resumed even without it (a preempted job restarted with the same command continues).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from musicrep.errors import ConfigError

logger = logging.getLogger(__name__)


def _distance(value: str) -> float | None:
    if value.lower() == "clip":
        return None
    try:
        return float(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected seconds or 'clip', got {value!r}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musicrep pretrain",
        description="Pre-train SF-NFNet (supervised BCE or SimCLR NT-Xent) on log-mel shards; "
        "exports the backbone to OUTPUT/export.",
    )
    parser.add_argument("objective", choices=("simclr", "supervised"))
    parser.add_argument("--features", help="glob of the log-mel TFRecord shards (local or gs://)")
    parser.add_argument("--labels", help="CSV/Parquet with track_id and tags ('|'-separated or a list); supervised")
    parser.add_argument("--output", required=True, help="run directory (checkpoints, metrics, export)")
    parser.add_argument("--config", dest="model_config", default="F0", help="SF-NFNet variant: F0 (default) or tiny")
    parser.add_argument("--batch-size", type=int, help="global batch (pairs for SimCLR); default 512 / 1920")
    parser.add_argument("--steps", type=int, default=200_000, help="optimizer steps in all (default 200000)")
    parser.add_argument("--warmup-steps", type=int, default=5_000, help="linear LR warm-up steps (default 5000)")
    parser.add_argument("--peak-lr", type=float, default=2e-4, help="LR after the warm-up (default 2e-4)")
    parser.add_argument("--mixup", action=argparse.BooleanOptionalAction, default=True, help="mixup (default on)")
    parser.add_argument(
        "--positive-max-distance-s",
        type=_distance,
        default=5.0,
        help="SimCLR positives: centres closer than this many seconds (default 5), or 'clip' "
        "for two snippets anywhere in the same clip (AudioSet-like data)",
    )
    parser.add_argument("--temperature", type=float, default=0.1, help="NT-Xent temperature (default 0.1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="steps between checkpoints")
    parser.add_argument("--log-every", type=int, default=100, help="steps between metrics lines")
    parser.add_argument("--shuffle-buffer", type=int, help="snippets in the shuffle buffer (default max(2·batch, 256))")
    parser.add_argument(
        "--draws-per-track", type=float, default=1.0,
        help="expected snippets drawn per track read (Poisson mean; default 1 = sampling with "
        "replacement as the paper; 4-8 with a larger --shuffle-buffer feeds a fast GPU from long tracks)",
    )
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=False, help="XLA-compile the step")
    parser.add_argument(
        "--bf16", dest="mixed_precision", action=argparse.BooleanOptionalAction, default=False,
        help="bfloat16 mixed precision (float32 weights)",
    )
    parser.add_argument(
        "--deterministic", action=argparse.BooleanOptionalAction, default=False,
        help="TensorFlow deterministic ops (bitwise reproducible; slower on GPU)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --output with its stored config")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    return parser


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the options describe (with --resume: the one stored in --output)."""
    from musicrep.model.training_config import TrainConfig

    if args.resume:
        stored = TrainConfig.load(args.output)
        if stored.objective != args.objective:
            raise ConfigError(f"{args.output} is a {stored.objective} run, not {args.objective}")
        return stored
    if not args.features:
        raise ConfigError("--features is required (unless --resume)")
    return TrainConfig(
        objective=args.objective,
        features=args.features,
        labels=args.labels,
        output_dir=args.output,
        model_config=args.model_config,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup_steps=args.warmup_steps,
        peak_lr=args.peak_lr,
        temperature=args.temperature,
        mixup=args.mixup,
        positive_max_distance_s=args.positive_max_distance_s,
        shuffle_buffer=args.shuffle_buffer,
        draws_per_track=args.draws_per_track,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        xla=args.xla,
        mixed_precision=args.mixed_precision,
        deterministic=args.deterministic,
    )


def run(argv: list[str] | None = None) -> int:
    """Entry point of `musicrep pretrain`; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    from musicrep.model.training import train

    result = train(config, resume=args.resume, progress=args.progress)
    summary = dataclasses.asdict(result)
    print(" ".join(f"{key}={value}" for key, value in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(run())
