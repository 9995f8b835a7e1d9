"""Fixtures of the job tests."""
import keras
import pytest

import musicrep.model
from musicrep.model import SF_NFNET_VARIANTS


@pytest.fixture(scope="module")
def tiny_model_uri(tmp_path_factory) -> str:
    """A randomly initialised tiny SF-NFNet, exported as every job reads it."""
    keras.utils.set_random_seed(7)
    uri = str(tmp_path_factory.mktemp("model") / "tiny")
    config = SF_NFNET_VARIANTS["tiny"]
    musicrep.model.save(musicrep.model.build_sf_nfnet(config), uri, config=config, source="test")
    return uri
