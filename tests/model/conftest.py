"""Models shared by the model tests: building F0 costs seconds, so build it once."""
import keras
import pytest

from musicrep.model.sf_nfnet import build_sf_nfnet


@pytest.fixture(scope="session")
def f0_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_sf_nfnet("F0")


@pytest.fixture(scope="session")
def tiny_model() -> keras.Model:
    """Tiny SF-NFNet with non-zero skip gains, so every residual branch reaches the output."""
    keras.utils.set_random_seed(1)
    model = build_sf_nfnet("tiny")
    for layer in model.layers:
        if layer.name.endswith("_skip_gain"):
            layer.gain.assign(0.7)
    return model
