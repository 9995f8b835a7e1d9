"""Fixtures of the job tests."""
import keras
import pytest

import musicrep.model
from musicrep.model import SF_NFNET_VARIANTS
from audio_files import tone, write_audio
from prism_support import find_or_build_prism, prism_args

# Each job test runs on the default runner (Beam's FnApiRunner) and on Prism, Beam's
# portable runner (the Job API + SDK-harness path of Flink and Dataflow Runner v2).
RUNNERS = ("default", "prism")


@pytest.fixture(scope="module")
def tiny_model_uri(tmp_path_factory) -> str:
    """A randomly initialised tiny SF-NFNet, exported as every job reads it."""
    keras.utils.set_random_seed(7)
    uri = str(tmp_path_factory.mktemp("model") / "tiny")
    config = SF_NFNET_VARIANTS["tiny"]
    musicrep.model.save(musicrep.model.build_sf_nfnet(config), uri, config=config, source="test")
    return uri


@pytest.fixture(scope="session")
def prism_binary() -> str:
    return find_or_build_prism()


@pytest.fixture(params=RUNNERS)
def runner_args(request) -> list[str]:
    """Beam options of one runner: [] (the default) or Prism in LOOPBACK."""
    if request.param == "default":
        return []
    return prism_args(request.getfixturevalue("prism_binary"))


@pytest.fixture(scope="module")
def mixed_catalog(tmp_path_factory):
    """Two short playable tracks and one that is not audio (a `decode` dead letter)."""
    root = tmp_path_factory.mktemp("mixed")
    write_audio(str(root / "a.wav"), tone(220, 2.0, 44100), 44100)
    write_audio(str(root / "b.flac"), tone(330, 1.5, 22050), 22050)
    (root / "bad.mp3").write_text("not audio\n")
    return root
