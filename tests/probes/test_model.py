"""The probe network, its schedule and its training loop."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from musicrep.errors import ConfigError
from musicrep.probes.model import build_probe, fit_probe, learning_rate_schedule, predict_probe
from musicrep.probes.presets import HyperParameters


def test_layers_l2_on_kernels_and_dropout_after_relu():
    model = build_probe(input_dim=8, n_outputs=3, hidden_units=(16, 16), dropout=0.5, l2=1e-4)
    names = [layer.name for layer in model.layers[1:]]
    assert names == ["probe_hidden1", "probe_hidden1_relu", "probe_hidden1_dropout",
                     "probe_hidden2", "probe_hidden2_relu", "probe_hidden2_dropout",
                     "probe_output"]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert all(layer.kernel_regularizer is not None and layer.bias_regularizer is None
               for layer in dense)
    # Keras' L2(l) adds l * sum(w²) per kernel, biases excluded.
    expected = 1e-4 * sum(float(np.sum(np.square(layer.kernel.numpy()))) for layer in dense)
    model(np.zeros((1, 8), np.float32))
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_linear_probe_drops_its_input_only_when_asked():
    linear = build_probe(input_dim=8, n_outputs=3, hidden_units=(), dropout=0.3, l2=0.0)
    assert [layer.name for layer in linear.layers[1:]] == ["probe_input_dropout", "probe_output"]
    plain = build_probe(input_dim=8, n_outputs=3, hidden_units=(), dropout=0.0, l2=0.0)
    assert [layer.name for layer in plain.layers[1:]] == ["probe_output"]
    assert not plain.losses


def test_schedule_warms_up_linearly_then_cosine_to_zero():
    schedule = learning_rate_schedule(learning_rate=1e-3, steps=1100, warmup_steps=100)
    lr = lambda step: float(schedule(step))  # noqa: E731
    assert lr(0) == 0.0
    assert lr(50) == pytest.approx(5e-4)
    assert lr(100) == pytest.approx(1e-3)
    assert lr(600) == pytest.approx(5e-4, rel=1e-5)  # half-way through the cosine
    assert lr(1100) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match=r"warmup_steps=1000, total_steps=500 \(lower --warmup-steps"):
        learning_rate_schedule(learning_rate=1e-3, steps=500, warmup_steps=1000)


def test_fit_learns_and_counts_steps(rng):
    x = rng.standard_normal((200, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    keras.utils.set_random_seed(0)
    model = build_probe(input_dim=8, n_outputs=2, hidden_units=(16,), dropout=0.0, l2=0.0)
    summary = fit_probe(model, tf.constant(x), tf.constant(y), task="multiclass",
                        hyper=HyperParameters(1e-2, 300, 0.0), batch_size=512,
                        warmup_steps=10, seed=0)
    assert summary.batch_size == 200  # capped at the training set
    assert summary.steps == 300
    probabilities = predict_probe(model, x, task="multiclass")
    assert probabilities.shape == (200, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(probabilities.argmax(axis=1) == y) > 0.95


def test_fused_adam_matches_keras_adam_step_for_step(rng):
    from musicrep.probes.adam import FusedAdam

    schedule = learning_rate_schedule(learning_rate=1e-2, steps=50, warmup_steps=5)
    keras.utils.set_random_seed(1)
    ours = build_probe(input_dim=6, n_outputs=2, hidden_units=(8,), dropout=0.0, l2=1e-3)
    theirs = keras.models.clone_model(ours)
    theirs.set_weights(ours.get_weights())
    initial = ours.get_weights()
    fused = FusedAdam(ours.trainable_variables, schedule=schedule, beta_1=0.9, beta_2=0.999,
                      epsilon=1e-7)
    reference = keras.optimizers.Adam(learning_rate=schedule, beta_1=0.9, beta_2=0.999,
                                      epsilon=1e-7)
    x = tf.constant(rng.standard_normal((32, 6)).astype(np.float32))
    target = tf.constant(rng.standard_normal((32, 2)).astype(np.float32))
    for _ in range(20):
        for model, apply in ((ours, fused.apply),
                             (theirs, lambda g: reference.apply_gradients(
                                 zip(g, theirs.trainable_variables)))):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x) - target) ** 2) + tf.add_n(model.losses)
            apply(tape.gradient(loss, model.trainable_variables))
    assert int(fused.iterations) == int(reference.iterations) == 20
    # Same float32 arithmetic in another order: agreement to a few ulps of the weights.
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(ours.get_weights()[0] - initial[0]).max() > 1e-3  # it did train
