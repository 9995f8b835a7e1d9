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
from musicrep.model.export import load, read_metadata
from musicrep.model.training import NonFiniteLossError, train
from musicrep.model.training_config import TrainConfig
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
    return TrainConfig.from_mapping(settings)


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
    resumed = pretrain_run(["simclr", "--resume", "--output", interrupted.output_dir, "--no-progress"])
    assert (resumed.step, resumed.resumed_from, resumed.output_dir) == (STEPS, 6, interrupted.output_dir)
    assert resumed.export_dir == os.path.join(interrupted.output_dir, "export")
    assert resumed.model_id == read_metadata(resumed.export_dir).model_id
    assert resumed.loss == read_metrics(interrupted.output_dir)[-1]["loss"]  # log_every=1: the last step's loss
    assert resumed.seconds > 0
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
    assert "expected seconds or 'clip', got 'soon'" in capsys.readouterr().err
    # Bounds and finiteness come from the TrainConfig fields: one line each, exit 2.
    base = ["pretrain", "simclr", "--features", "x*", "--output", str(tmp_path / "d")]
    for extra, message in ((["--batch-size", "0"], "batch_size must be ≥ 1, got 0"),
                           (["--peak-lr", "inf"], "peak_lr must be a finite number, got inf"),
                           (["--draws-per-track", "0"], "draws_per_track must be > 0, got 0.0"),
                           (["--warmup-steps", "10", "--steps", "10"], "need 0 <= warmup_steps < total_steps"),
                           (["--config", "F1"], "model_config must be one of ['F0', 'tiny'], got 'F1'")):
        assert cli.main(base + extra) == 2, extra
        error = capsys.readouterr().err
        assert error.startswith(f"musicrep pretrain: {message}") and error.count("\n") == 1, error
    assert not os.path.exists(tmp_path / "d")


def test_a_stored_config_with_unknown_or_bad_settings_is_refused(tmp_path, capsys):
    good = TrainConfig(objective="simclr", features="f*", output_dir=str(tmp_path))
    fields = json.loads(good.to_json())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "lr": 1e-3, "warmup": 5}))
    assert cli.main(["pretrain", "simclr", "--resume", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("musicrep pretrain: config.json: unknown setting(s) ['lr', 'warmup']; known: ")
    (tmp_path / "config.json").write_text(json.dumps({**fields, "steps": "many"}))
    assert cli.main(["pretrain", "simclr", "--resume", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "musicrep pretrain: steps must be int, got 'many'\n"


def test_cli_builds_the_config(tmp_path):
    from musicrep.model.pretrain import build_parser, config_from_args

    args = build_parser().parse_args(
        ["simclr", "--features", "f*", "--output", str(tmp_path), "--config", "tiny",
         "--positive-max-distance-s", "clip", "--no-mixup", "--batch-size", "16"]
    )
    config = config_from_args(args)
    assert config.sampling.positive_max_distance_s is None and not config.sampling.mixup
    assert config.global_batch_size == 16 and config.model_config == "tiny"
    assert TrainConfig.from_json(config.to_json()) == config
    # config.json stays flat: the sampler's settings beside the others, as before.
    stored = json.loads(config.to_json())
    assert stored["positive_max_distance_s"] is None and stored["mixup"] is False and "sampling" not in stored
    assert stored["cycle_length"] == 8 and stored["projector_hidden"] is None
    # The sampler reads the same settings object, no copy.
    sampler = config.sampler_config(batch_size=4, stream=1)
    assert sampler.sampling is config.sampling and sampler.seed == config.seed + 7_777_777 and sampler.pairs
    # Every option of the hand-written parser it replaced still parses to its field.
    old_flags = ["supervised", "--features", "f*", "--labels", "l.csv", "--output", "o", "--config", "tiny",
                 "--batch-size", "8", "--steps", "100", "--warmup-steps", "10", "--peak-lr", "1e-3",
                 "--mixup", "--positive-max-distance-s", "2.5", "--temperature", "0.2", "--seed", "3",
                 "--checkpoint-every", "7", "--log-every", "2", "--shuffle-buffer", "64",
                 "--draws-per-track", "4", "--xla", "--bf16", "--deterministic", "--no-progress"]
    parsed = build_parser().parse_args(old_flags)
    full = config_from_args(parsed)
    assert (full.objective, full.labels, full.output_dir, full.batch_size, full.steps, full.warmup_steps) == (
        "supervised", "l.csv", "o", 8, 100, 10)
    assert (full.peak_lr, full.temperature, full.seed, full.checkpoint_every, full.log_every) == (1e-3, 0.2, 3, 7, 2)
    assert (full.sampling.mixup, full.sampling.positive_max_distance_s, full.sampling.shuffle_buffer,
            full.sampling.draws_per_track) == (True, 2.5, 64, 4.0)
    assert full.xla and full.mixed_precision and full.deterministic and parsed.progress is False
    widths = config_from_args(build_parser().parse_args(
        ["simclr", "--features", "f", "--output", "o", "--projector-hidden", "32,16", "--no-checkpoint-input"]))
    assert widths.projector_widths == (32, 16) and not widths.checkpoint_input
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
