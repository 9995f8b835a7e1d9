"""The released MULE backbone imports into our SF-NFNet-F0 and computes the same embedding.

The oracle (sxmp-mule 1.1.2, TensorFlow 2.13.1, GPL — run, never imported) builds its
backbone exactly as the release was built, perturbs every weight (so gains, biases, skip
gains and SE layers all matter and a swapped weight cannot hide behind its init value),
saves it as a Keras 2.13 `.keras` file (and as `.h5`, which the oracle reloads fast;
tests/mule_reference.py, cached per machine) and embeds a few standardised log-mel windows.
We import that file with our CLI and embed the raw windows (our model standardises).
"""
import json
import zipfile

import h5py
import numpy as np
import pytest

from musicrep.errors import ConfigError
from musicrep.model import cli
from musicrep.model.export import load, read_metadata
from musicrep.model.mule_import import _creation_index, _snake_case, import_mule
from mule_reference import reference_embeddings, reference_model


@pytest.mark.slow
def test_import_mule_matches_the_reference(tmp_path, rng):
    log_mel = np.log10(1 + 10_000 * rng.gamma(0.5, 0.01, size=(3, 96, 300))).astype("float32")
    reference_files = reference_model(seed=7)
    reference = reference_embeddings(reference_files, log_mel, tmp_path)
    assert reference.shape == (3, 1728) and reference.std() > 0.05  # the residual branches contribute

    export_uri = str(tmp_path / "export")
    result = cli.run(["import-mule", str(reference_files.keras_file), "--output", export_uri])
    assert result.export_dir == export_uri and result.metadata.n_parameters == 62_345_742
    assert result.model_id == read_metadata(export_uri).model_id
    ours = np.asarray(load(export_uri)(log_mel))
    # float32 through ~60 layers on two TF versions: measured max |Δ| ≈ 7e-7.
    assert np.max(np.abs(ours - reference)) <= 1e-4


def test_keras2_naming_rules():
    assert [_snake_case(c) for c in ("WeightStandardization", "TFOpLambda", "GlobalAveragePooling2D", "Dense")] == [
        "weight_standardization", "tf_op_lambda", "global_average_pooling2d", "dense"]
    assert [_creation_index(n) for n in ("dense", "dense_12", "scalar_multiply_3")] == [0, 12, 3]


def test_a_file_of_another_architecture_is_refused(tmp_path):
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as handle:
        handle.create_group("_layer_checkpoint_dependencies/weight_standardization/vars").create_dataset(
            "0", data=np.zeros((3, 3, 1, 2), "float32"))
    layer = {"class_name": "WeightStandardization", "name": "weight_standardization", "config": {}}
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps({"config": {"layers": [layer]}}))
        archive.write(weights, "model.weights.h5")
    with pytest.raises(ConfigError, match="1 weight-standardised convs, expected 120"):
        import_mule(str(path))
