"""Tiny SimCLR and supervised runs on synthetic shards: the loss falls, resume is exact."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from musicrep import cli
from musicrep.errors import ConfigError
from musicrep.contracts.feature_config import FeatureConfig
from musicrep.model import NonFiniteLossError, TrainConfig, load, read_metadata, train
from musicrep.model.pretrain import run as pretrain_run

STEPS = 18


def tiny_config(catalog, output_dir, **overrides) -> TrainConfig:
    settings = dict(
        objective="simclr",
        features=catalog["pattern"],
        output_dir=str(output_dir),
        model_config="tiny",
        batch_size=8,
        steps=STEPS,
        warmup_steps=3,
        peak_lr=3e-3,
        log_every=1,
        checkpoint_every=6,
        mixup=False,  # SimCLR with mixup learns too slowly for a unit test; supervised keeps it
        shuffle_buffer=32,
        cycle_length=2,
        seed=5,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def read_metrics(output_dir) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def falls(metrics: list[dict], k: int = 6) -> tuple[float, float]:
    losses = [record["loss"] for record in metrics]
    return float(np.mean(losses[:k])), float(np.mean(losses[-k:]))


def final_weights(output_dir) -> list[np.ndarray]:
    return load(os.path.join(output_dir, "export")).get_weights()


@pytest.fixture(scope="module")
def simclr_run(learnable_catalog, tmp_path_factory):
    config = tiny_config(learnable_catalog, tmp_path_factory.mktemp("simclr") / "run")
    return config, train(config, progress=False)


def test_simclr_loss_falls_and_the_run_directory_is_complete(simclr_run):
    config, result = simclr_run
    assert result.step == STEPS and result.resumed_from == 0
    metrics = read_metrics(config.output_dir)
    assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
    assert {"step", "loss", "lr", "examples_per_s", "grad_norm", "tracks_read", "tracks_short"} <= set(metrics[0])
    first, last = falls(metrics)
    assert last < first - 0.8, (first, last)  # NT-Xent of 8 pairs starts near 2·ln 15 ≈ 5.4
    assert metrics[0]["lr"] == 0.0 and metrics[3]["lr"] == pytest.approx(3e-3)
    assert TrainConfig.load(config.output_dir) == config
    assert read_metadata(os.path.join(config.output_dir, "export")).config["name"] == "tiny"
    assert os.listdir(os.path.join(config.output_dir, "tensorboard"))


def test_resume_after_an_interruption_gives_the_same_weights(simclr_run, tmp_path):
    config, _ = simclr_run
    interrupted = tiny_config({"pattern": config.features}, tmp_path / "run")
    # Dies after step 10: the checkpoint of step 6 survives, steps 7–10 are lost.
    stopped = train(interrupted, progress=False, stop_at_step=10)
    assert stopped.step == 10 and stopped.export_dir is None
    assert pretrain_run(["simclr", "--resume", "--output", interrupted.output_dir, "--no-progress"]) == 0
    metrics = read_metrics(interrupted.output_dir)
    assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
    reference = read_metrics(config.output_dir)
    assert [r["loss"] for r in metrics] == [r["loss"] for r in reference]
    assert [r["lr"] for r in metrics] == [r["lr"] for r in reference]
    for ours, theirs in zip(final_weights(interrupted.output_dir), final_weights(config.output_dir)):
        np.testing.assert_array_equal(ours, theirs)
    # Another config in the same directory is refused.
    with pytest.raises(ConfigError, match="another config"):
        train(tiny_config({"pattern": config.features}, tmp_path / "run", peak_lr=1e-4), progress=False)


def test_supervised_loss_falls(learnable_catalog, tmp_path):
    config = tiny_config(
        learnable_catalog, tmp_path / "run", objective="supervised", labels=learnable_catalog["labels"],
        steps=16, checkpoint_every=100, peak_lr=1e-3, mixup=True,
    )
    result = train(config, progress=False)
    metrics = read_metrics(config.output_dir)
    first, last = falls(metrics, k=5)
    assert last < first - 0.1, (first, last)  # BCE over 4 labels starts near ln 2 ≈ 0.69
    with open(os.path.join(config.output_dir, "labels.json")) as handle:
        assert json.load(handle)["vocabulary"] == ["a", "b", "c", "music"]
    assert result.export_dir and load(result.export_dir).output_shape == (None, 224)


def test_non_finite_loss_raises_with_the_step(learnable_catalog, tmp_path, monkeypatch):
    from musicrep.model import losses

    # NaN inputs would not do: ReLU maps NaN to 0 in TensorFlow. Poison the loss instead.
    monkeypatch.setattr(
        losses, "nt_xent_per_example", lambda h_a, h_b, temperature: tf.reduce_sum(h_a, axis=1) * float("nan")
    )
    config = tiny_config(learnable_catalog, tmp_path / "run", batch_size=2, steps=3, warmup_steps=1)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 1"):
        train(config, progress=False)


def test_cli_refuses_bad_invocations(tmp_path, capsys):
    assert cli.main(["pretrain", "supervised", "--features", "x*", "--output", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == "musicrep pretrain: supervised pre-training needs labels (--labels CSV/Parquet)\n"
    assert cli.main(["pretrain", "simclr", "--resume", "--output", str(tmp_path / "b")]) == 2
    assert capsys.readouterr().err == f"musicrep pretrain: {tmp_path / 'b'} has no config.json: nothing to resume\n"
    with pytest.raises(SystemExit):
        pretrain_run(["simclr", "--positive-max-distance-s", "soon", "--output", "c"])


def test_cli_builds_the_config(tmp_path):
    from musicrep.model.pretrain import build_parser, config_from_args

    args = build_parser().parse_args(
        ["simclr", "--features", "f*", "--output", str(tmp_path), "--config", "tiny",
         "--positive-max-distance-s", "clip", "--no-mixup", "--batch-size", "16"]
    )
    config = config_from_args(args)
    assert config.positive_max_distance_s is None and not config.mixup and config.global_batch_size == 16
    assert TrainConfig.from_json(config.to_json()) == config
    paper = TrainConfig(objective="supervised", features="f", output_dir="o", labels="l.csv")
    assert (paper.global_batch_size, paper.steps, paper.warmup_steps, paper.peak_lr) == (512, 200_000, 5_000, 2e-4)
    assert paper.projector_widths == (4096, 4096, 4096) and paper.decay_steps == 195_000


def test_the_export_records_the_front_end_of_the_shards_it_trained_on(shard_writer, tmp_path, rng):
    # Not the default front end: another resampler (same 96 bands, so the model fits).
    front_end = FeatureConfig(resampler="soxr_hq")
    tracks = [(f"t{i}", rng.random((320, 96), dtype=np.float32)) for i in range(4)]
    pattern = shard_writer(str(tmp_path / "shards"), tracks, features=front_end)
    config = tiny_config({"pattern": pattern}, tmp_path / "run", batch_size=2, steps=2, warmup_steps=1)
    result = train(config, progress=False)
    metadata = read_metadata(result.export_dir)
    assert metadata.features == front_end
    assert metadata.feature_config_sha256 == front_end.sha256()


def test_shards_of_another_mel_size_are_refused_before_training(shard_writer, tmp_path, rng):
    front_end = FeatureConfig(n_mels=64)
    pattern = shard_writer(str(tmp_path / "shards"), [("t0", rng.random((320, 64), dtype=np.float32))],
                           features=front_end)
    config = tiny_config({"pattern": pattern}, tmp_path / "run", batch_size=2, steps=2, warmup_steps=1)
    with pytest.raises(ConfigError, match="hold 64 mel bands; SF-NFNet tiny takes 96"):
        train(config, progress=False)
    assert not os.path.exists(os.path.join(config.output_dir, "checkpoints"))


@pytest.mark.gpu
def test_on_gpus_the_run_is_mirrored_and_bf16_xla_training_learns(learnable_catalog, tmp_path):
    from musicrep.model.training import make_strategy

    strategy = make_strategy()
    gpus = len(tf.config.list_physical_devices("GPU"))
    assert isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync == gpus
    config = tiny_config(learnable_catalog, tmp_path / "run", batch_size=8 * gpus, mixed_precision=True, xla=True)
    result = train(config, progress=False, strategy=strategy)
    first, last = falls(read_metrics(config.output_dir))
    assert last < first - 0.3, (first, last)
    # The export is policy-free: float32 weights whatever the run computed in.
    assert {weight.dtype for weight in load(result.export_dir).weights} == {"float32"}
