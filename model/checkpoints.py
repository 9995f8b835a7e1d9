"""The run directory of pre-training: its config, label vocabulary and checkpoints.

A directory holds one run: `config.json` is written first, and a resumed run must match
it; `labels.json` keeps the supervised logit order; `checkpoints/` holds tf.train
checkpoints of the backbone, projector, optimizer (its step counter is the run's step),
the stochastic-depth RNG states and, optionally, the input iterator.
"""
from __future__ import annotations

import json
from typing import Any

import keras
import tensorflow as tf

from musicrep import fileio
from musicrep.errors import ConfigError
from musicrep.model.training_config import CONFIG_FILE, TrainConfig

CHECKPOINT_DIR = "checkpoints"
LABELS_FILE = "labels.json"


def checkpoint_dir(output_dir: str) -> str:
    return fileio.join(output_dir, CHECKPOINT_DIR)


def latest_step(directory: str) -> int | None:
    """The step of the newest checkpoint in `directory`, None when there is none."""
    latest = tf.train.latest_checkpoint(directory)
    return None if latest is None else int(latest.rsplit("-", 1)[-1])


def prepare_directory(config: TrainConfig, *, resume: bool, chief: bool) -> None:
    """Refuses a directory holding another run; the chief writes config.json."""
    config_path = fileio.join(config.output_dir, CONFIG_FILE)
    has_checkpoint = latest_step(checkpoint_dir(config.output_dir)) is not None
    if fileio.exists(config_path):
        stored = TrainConfig.load(config.output_dir)
        if stored != config:
            was, now = stored.to_mapping(), config.to_mapping()
            changed = {name: (was[name], now[name]) for name in now if was[name] != now[name]}
            raise ConfigError(
                f"{config.output_dir} holds a run with another config (stored, given): {changed}; "
                "use --resume to continue it as configured, or a new --output"
            )
    elif resume or has_checkpoint:
        raise ConfigError(f"{config.output_dir} has checkpoints but no {CONFIG_FILE}; cannot resume")
    if chief:
        fileio.mkdirs(config.output_dir)
        fileio.write_text(config_path, config.to_json())


def read_vocabulary(output_dir: str) -> tuple[str, ...] | None:
    """The label order of a supervised run already started here (a resume keeps it)."""
    path = fileio.join(output_dir, LABELS_FILE)
    return tuple(json.loads(fileio.read_text(path))["vocabulary"]) if fileio.exists(path) else None


def write_vocabulary(output_dir: str, vocabulary: tuple[str, ...]) -> None:
    fileio.write_text(fileio.join(output_dir, LABELS_FILE), json.dumps({"vocabulary": list(vocabulary)}, indent=2))


def run_checkpoint(
    *, backbone: keras.Model, projector: keras.Model, optimizer: keras.optimizers.Optimizer, iterator: Any | None
) -> tf.train.Checkpoint:
    """The tf.train.Checkpoint of a run (the input iterator only when given)."""
    # Stochastic depth's seed-generator states are variables outside `weights`, and a
    # Keras model does not expose them to tf.train: save them by position.
    seeds = [v for v in backbone.variables + projector.variables if v.path.endswith("seed_generator_state")]
    items = {
        "backbone": backbone,
        "projector": projector,
        "optimizer": optimizer,
        "rng": tf.train.Checkpoint(**{f"state{i}": v for i, v in enumerate(seeds)}),
    }
    if iterator is not None:
        items["data"] = iterator
    return tf.train.Checkpoint(**items)
