"""NT-Xent, BCE, mixup and the LR schedule against independent numpy formulas."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from musicrep.errors import ConfigError
from musicrep.model import losses, mixup, schedules


def numpy_nt_xent(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """SimCLR as the reference states it: stack, normalise, mask self, positive i ↔ i+N."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z_a)
    logits = z @ z.T / temperature
    np.fill_diagonal(logits, -np.inf)
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    positive = np.concatenate([np.arange(n) + n, np.arange(n)])
    ce = -log_softmax[np.arange(2 * n), positive]
    return float((ce[:n] + ce[n:]).mean())


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_numpy(rng, temperature):
    z_a = rng.standard_normal((6, 5)).astype(np.float32)
    z_b = z_a + 0.3 * rng.standard_normal((6, 5)).astype(np.float32)
    got = float(losses.nt_xent(z_a, z_b, temperature))
    # float32 logits up to 1/τ = 10: a few ulps of 10 after the log-sum-exp.
    assert got == pytest.approx(numpy_nt_xent(z_a, z_b, temperature), rel=1e-5)


def test_nt_xent_known_values():
    # Identical views of orthogonal vectors: each anchor's positive has cosine 1 and its
    # 2(N−1) negatives cosine 0, so each CE is log(e^{1/τ} + 2(N−1)) − 1/τ.
    n, t = 3, 0.5
    z = np.eye(n, dtype=np.float32)
    expected = 2 * math.log(math.exp(1 / t) + 2 * (n - 1)) - 2 / t
    assert float(losses.nt_xent(z, z, t)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="temperature must be > 0, got 0"):
        losses.nt_xent(z, z, 0.0)


def test_binary_cross_entropy_matches_numpy(rng):
    logits = rng.standard_normal((4, 7)).astype(np.float32) * 3
    labels = (rng.random((4, 7)) > 0.5).astype(np.float32) * 0.8
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    expected = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean(axis=1)
    np.testing.assert_allclose(losses.binary_cross_entropy_per_example(labels, logits), expected, rtol=1e-5)


def test_mix_matches_numpy(rng):
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    y = (rng.random((5, 2)) > 0.5).astype(np.float32)
    gains = np.array([0.9, 0.5, 0.71, 1.0, 0.2], np.float32)
    permutation = np.array([2, 0, 1, 4, 3], np.int32)
    expected_x = gains[:, None, None] * x + (1 - gains[:, None, None]) * x[permutation]
    np.testing.assert_allclose(mixup.mix(x, gains, permutation), expected_x, rtol=1e-6)
    np.testing.assert_allclose(mixup.mix(y, gains, permutation), gains[:, None] * y + (1 - gains[:, None]) * y[permutation], rtol=1e-6)


def test_mixup_uses_one_draw_for_features_and_labels(rng):
    x = rng.standard_normal((8, 6)).astype(np.float32)
    y = np.eye(8, dtype=np.float32)
    seed = tf.constant([3, 4], tf.int64)
    mixed_x, mixed_y = mixup.mixup(x, seed, labels=y)
    draw = mixup.draw_mixup(8, seed)
    gains, permutation = draw.gains.numpy(), draw.permutation.numpy()
    assert sorted(permutation) == list(range(8))
    np.testing.assert_allclose(mixed_x, gains[:, None] * x + (1 - gains[:, None]) * x[permutation], rtol=1e-6)
    np.testing.assert_allclose(mixed_y, gains[:, None] * y + (1 - gains[:, None]) * y[permutation], rtol=1e-6)


def test_mixup_gains_follow_beta_5_2():
    gains = mixup.draw_mixup(40_000, tf.constant([1, 2], tf.int64)).gains.numpy()
    # Beta(5, 2): mean 5/7, variance 10/392; the sample mean's std is 0.0008.
    assert gains.mean() == pytest.approx(5 / 7, abs=0.004)
    assert gains.var() == pytest.approx(10 / 392, rel=0.05)
    assert 0 < gains.min() and gains.max() < 1


def numpy_lr(step: float, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * step / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))


@pytest.mark.parametrize("peak,warmup,total", [(2e-4, 5_000, 200_000), (1e-3, 10, 50)])
def test_learning_rate_at_the_checkpoints_of_the_schedule(peak, warmup, total):
    schedule = schedules.warmup_cosine(peak_lr=peak, warmup_steps=warmup, total_steps=total)
    decay = total - warmup
    for step in (0, warmup // 2, warmup, warmup + decay // 2, total, total + 10):
        assert float(schedule(step)) == pytest.approx(numpy_lr(step, peak, warmup, total), rel=1e-5, abs=1e-12)
    assert float(schedule(warmup + decay // 2)) == pytest.approx(peak / 2, rel=1e-4)
    rebuilt = type(schedule).from_config(schedule.get_config())
    assert float(rebuilt(warmup + 3)) == float(schedule(warmup + 3))


def test_schedule_rejects_bad_settings():
    with pytest.raises(ConfigError, match="warmup_steps=10, total_steps=10"):
        schedules.warmup_cosine(peak_lr=1e-3, warmup_steps=10, total_steps=10)
    with pytest.raises(ConfigError, match="peak_lr must be > 0, got 0"):
        schedules.warmup_cosine(peak_lr=0, warmup_steps=1, total_steps=10)


def test_nt_xent_gathers_negatives_across_replicas(rng):
    """Two replicas, each with half the pairs: the global mean equals one-device NT-Xent."""
    z_a = rng.standard_normal((8, 5)).astype(np.float32)
    z_b = rng.standard_normal((8, 5)).astype(np.float32)
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from musicrep.model.losses import nt_xent_per_example
        z_a, z_b = (np.array(v, np.float32) for v in json.load(sys.stdin))
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        dataset = tf.data.Dataset.from_tensors((z_a, z_b))
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

        @tf.function
        def step(batch):
            def replica(a, b):
                with tf.GradientTape() as tape:
                    tape.watch(a)
                    loss = tf.nn.compute_average_loss(nt_xent_per_example(a, b, 0.1), global_batch_size=8)
                return loss, tape.gradient(loss, a)
            loss, grad = strategy.run(replica, args=batch)
            return strategy.reduce("SUM", loss, axis=None), tf.concat(strategy.experimental_local_results(grad), 0)

        loss, grad = step(batch)
        print(json.dumps({"loss": float(loss), "grad": grad.numpy().tolist()}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps([z_a.tolist(), z_b.tolist()]),
        capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["loss"] == pytest.approx(numpy_nt_xent(z_a, z_b, 0.1), rel=1e-5)
    a = tf.constant(z_a)
    with tf.GradientTape() as tape:
        tape.watch(a)
        loss = losses.nt_xent(a, z_b, 0.1)
    # Each replica's gradient w.r.t. its own rows: the gather passes the negatives' share back.
    np.testing.assert_allclose(got["grad"], tape.gradient(loss, a).numpy(), rtol=1e-4, atol=1e-6)
