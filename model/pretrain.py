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
import logging

from musicrep import dataconfig
from musicrep.errors import ConfigError
from musicrep.model.training_config import TrainConfig, TrainResult

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The options: one per TrainConfig setting (musicrep.dataconfig), plus how to run."""
    parser = argparse.ArgumentParser(
        prog="musicrep pretrain",
        description="Pre-train SF-NFNet (supervised BCE or SimCLR NT-Xent) on log-mel shards; "
        "exports the backbone to OUTPUT/export. Every setting: docs/configuration.md.",
    )
    dataconfig.add_arguments(parser, TrainConfig)
    parser.add_argument("--resume", action="store_true", help="continue the run in --output with its stored config")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the options describe (with --resume: the one stored in --output)."""
    if args.resume:
        stored = TrainConfig.load(args.output_dir)
        if stored.objective != args.objective:
            raise ConfigError(f"{args.output_dir} is a {stored.objective} run, not {args.objective}")
        return stored
    if "features" not in args:
        raise ConfigError("--features is required (unless --resume)")
    return dataconfig.from_arguments(TrainConfig, args)


def run(argv: list[str] | None = None) -> TrainResult:
    """Entry point of `musicrep pretrain`: trains (or resumes) and returns the result."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    from musicrep.model.training import train

    return train(config, resume=args.resume, progress=args.progress)
