"""Exports: save → load bit-identical, the sidecar, the CLI, and the projector."""
import hashlib
import json

import keras
import numpy as np
import pytest

from musicrep.errors import MusicrepError
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
from musicrep import cli as musicrep_cli
from musicrep.model import cli
from musicrep.model.export import load, read_metadata, save
from musicrep.model.projector import projector
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, SFNFNetConfig, build_sf_nfnet
from musicrep.model.export import SIDECAR_FILE, compute_model_id


@pytest.fixture
def tiny_export(tiny_model, tmp_path):
    uri = str(tmp_path / "tiny")
    metadata = save(tiny_model, uri, config=SF_NFNET_VARIANTS["tiny"], source="test")
    return uri, metadata


def test_save_load_is_bit_identical(tiny_model, tiny_export, rng):
    uri, metadata = tiny_export
    loaded = load(uri)
    assert [w.path for w in loaded.weights] == [w.path for w in tiny_model.weights]
    for ours, theirs in zip(loaded.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    x = rng.standard_normal((2, 96, 300)).astype("float32")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(tiny_model(x)))
    assert compute_model_id(loaded, SF_NFNET_VARIANTS["tiny"]) == metadata.model_id


def test_sidecar_describes_the_model(tiny_model, tiny_export):
    uri, metadata = tiny_export
    assert read_metadata(uri) == metadata
    assert metadata.embedding_size == 224 == tiny_model.output.shape[-1]
    assert metadata.n_parameters == tiny_model.count_params()
    assert metadata.feature_config_sha256 == DEFAULT_FEATURE_CONFIG.sha256()
    assert metadata.features == DEFAULT_FEATURE_CONFIG
    assert SFNFNetConfig.from_dict(metadata.config) == SF_NFNET_VARIANTS["tiny"]
    assert (metadata.n_mels, metadata.min_frames) == (96, 16)
    # model_id recomputed from its definition: sha256 of the config JSON, then of each
    # weight's path, shape (scalars as (1,)) and float32 little-endian bytes.
    digest = hashlib.sha256(json.dumps(SF_NFNET_VARIANTS["tiny"].to_dict(), sort_keys=True).encode())
    for weight in tiny_model.weights:
        value = np.ascontiguousarray(np.asarray(weight), dtype="<f4")
        digest.update(f"{weight.path}:{value.shape}".encode() + value.tobytes())
    assert metadata.model_id == digest.hexdigest()


def test_load_refuses_weights_that_do_not_match_the_sidecar(tiny_export, tmp_path):
    uri, metadata = tiny_export
    sidecar = tmp_path / "tiny" / SIDECAR_FILE
    fields = json.loads(sidecar.read_text())
    fields["model_id"] = "0" * 64
    sidecar.write_text(json.dumps(fields))
    with pytest.raises(MusicrepError, match=f"weights hash to {metadata.model_id}, but the sidecar says 0000"):
        load(uri)


def test_cli_init_and_info(tmp_path, capsys):
    results = {}
    for run_name, seed in (("a", 4), ("b", 4), ("c", 5)):
        result = cli.run(["init", "--config", "tiny", "--seed", str(seed), "--output", str(tmp_path / run_name)])
        assert result.export_dir == str(tmp_path / run_name)
        assert result.metadata == read_metadata(result.export_dir)  # what was written is what it says
        results[run_name] = result
    assert results["a"].model_id == results["b"].model_id != results["c"].model_id
    assert results["a"].metadata.source == "init seed=4"
    assert results["a"].metadata.n_parameters == build_sf_nfnet("tiny").count_params()
    info = cli.run(["info", str(tmp_path / "c")])
    assert (info.command, info.export_dir, info.metadata) == ("info", str(tmp_path / "c"), results["c"].metadata)
    # The command line prints the result: one line for init, the sidecar for info.
    assert musicrep_cli.main(["model", "init", "--config", "tiny", "--seed", "4", "--output", str(tmp_path / "d")]) == 0
    printed = capsys.readouterr().out
    assert printed == f"model init: wrote {tmp_path / 'd'} (model {results['a'].model_id}, tiny, " \
                      f"{results['a'].metadata.n_parameters:,} parameters)\n"
    assert musicrep_cli.main(["model", "info", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == results["c"].model_id


def test_projector_matches_spec():
    keras.utils.set_random_seed(0)
    head = projector(1024)
    assert head.count_params() == 44_838_912
    assert head.output.shape == (None, 1024) and head.input.shape == (None, 1728)
    out_layer = head.get_layer("projector_out")
    assert out_layer.bias is None
    assert float(np.std(out_layer.kernel.numpy())) == pytest.approx(0.01, rel=0.01)
    assert [head.get_layer(f"projector_dense{i}").activation.__name__ for i in (1, 2, 3)] == ["relu"] * 3


def test_projector_for_supervised_logits():
    head = projector(50, hidden=(64,), input_dim=224)
    assert head.count_params() == 224 * 64 + 64 + 64 * 50
