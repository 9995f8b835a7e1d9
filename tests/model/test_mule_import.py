"""The released MULE backbone imports into our SF-NFNet-F0 and computes the same embedding.

The oracle (sxmp-mule 1.1.2, TensorFlow 2.13.1, GPL — run, never imported) builds its
backbone exactly as the release was built, perturbs every weight (so gains, biases, skip
gains and SE layers all matter and a swapped weight cannot hide behind its init value),
saves it as a Keras 2.13 `.keras` file and embeds a few standardised log-mel windows.
We import that file with our CLI and embed the raw windows (our model standardises).
"""
import json
import zipfile

import h5py
import numpy as np
import pytest

from musicrep.errors import ConfigError
from musicrep.model import cli, load
from musicrep.model.mule_import import _creation_index, _snake_case, import_mule
from tests.oracle_env import run_oracle

ORACLE_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
from mule.models.sfnfnetf0 import SfNfNetF0

out_keras, in_npy, out_npy, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tf.keras.utils.set_random_seed(seed)
# SfNfNetF0 is a SCOOCH Configurable; set its parameters directly and build only the backbone
# (no projector, no fc), as the released model.keras holds.
builder = object.__new__(SfNfNetF0)
builder._config_instances = {}
builder._cfg = {"SfNfNetF0": {}}
settings = dict(_alpha=0.2, _scaled_activation_type="gelu", _f_value=0, _projector_layers=[],
                _include_fc=False, _projector_activation="relu",
                _input_shapes=[[None, 96, 300, 1]], _output_shapes=[[None, 1728]])
for key, value in settings.items():
    setattr(builder, key, value)
model = builder._make_model()
rng = np.random.default_rng(seed)

def perturb(variable, value):
    variable.assign(np.asarray(value, dtype=np.float32))

for layer in model.layers:
    kind = type(layer).__name__
    if kind == "WeightStandardization":
        perturb(layer.v, layer.v.numpy() * (1 + 0.2 * rng.standard_normal(layer.v.shape)))
        perturb(layer.gain, 1 + 0.2 * rng.standard_normal(layer.gain.shape))
        perturb(layer.layer.bias, 0.1 * rng.standard_normal(layer.layer.bias.shape))
    elif kind == "Dense":
        perturb(layer.bias, 0.1 * rng.standard_normal(layer.bias.shape))
    elif kind == "ScalarMultiply" and layer.trainable_weights:
        perturb(layer.gain, rng.normal(0.0, 0.5))
model.save(out_keras)
x = np.load(in_npy).astype(np.float64)
x = x - x.mean(axis=(1, 2), keepdims=True)
x = x / np.maximum(x.std(axis=(1, 2), keepdims=True), 0.01)
np.save(out_npy, model.predict(x[..., None].astype(np.float32), verbose=0))
"""


@pytest.mark.slow
def test_import_mule_matches_the_reference(tmp_path, rng):
    log_mel = np.log10(1 + 10_000 * rng.gamma(0.5, 0.01, size=(3, 96, 300))).astype("float32")
    np.save(tmp_path / "log_mel.npy", log_mel)
    reference_file = tmp_path / "model.keras"
    run_oracle(ORACLE_SCRIPT, str(reference_file), str(tmp_path / "log_mel.npy"), str(tmp_path / "ref.npy"), "7")
    reference = np.load(tmp_path / "ref.npy")
    assert reference.shape == (3, 1728) and reference.std() > 0.05  # the residual branches contribute

    export_uri = str(tmp_path / "export")
    assert cli.run(["import-mule", str(reference_file), "--output", export_uri]) == 0
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
