"""The reference SF-NFNet-F0 backbone with random weights, built by the oracle (sxmp-mule).

`reference_model_file(seed)` returns a Keras 2.13 `.keras` file that the oracle's own code
built exactly as the release was built (backbone only, no projector), with every weight
perturbed so gains, biases, skip gains and SE layers all matter and a swapped weight cannot
hide behind its init value. Building F0 costs ~30 s of the oracle's TensorFlow, and the
file is ~250 MB, so it is written once per machine into the oracle cache (MUSICREP_CACHE)
under a name keyed by the build script, the seed and the sxmp-mule version; a changed
script makes a new file and removes the stale ones.

`reference_embeddings(model_file, log_mel)` runs the file in the oracle on raw
[batch, 96, frames] log-mel windows, standardising each window as the reference's
SliceExtractor does (mean over the window, std floored at 0.01).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from oracle_env import MULE_VERSION, cache_dir, run_oracle

BUILD_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
from mule.models.sfnfnetf0 import SfNfNetF0

out_keras, seed = sys.argv[1], int(sys.argv[2])
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
"""

# Loads the file the way the reference's EmbeddingFeature does (its custom layers; the
# scaled activations register themselves on import) and embeds standardised windows.
EMBED_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
from mule.models.layers import ScalarMultiply, StochDepth, WeightStandardization

model_keras, in_npy, out_npy = sys.argv[1:4]
custom = {cls.__name__: cls for cls in (WeightStandardization, StochDepth, ScalarMultiply)}
model = tf.keras.models.load_model(model_keras, custom_objects=custom, compile=False)
x = np.load(in_npy).astype(np.float64)
x = x - x.mean(axis=(1, 2), keepdims=True)
x = x / np.maximum(x.std(axis=(1, 2), keepdims=True), 0.01)
np.save(out_npy, model.predict(x[..., None].astype(np.float32), verbose=0))
"""


def _cache_key(seed: int) -> str:
    digest = hashlib.sha256(f"{MULE_VERSION}\n{seed}\n{BUILD_SCRIPT}".encode()).hexdigest()
    return digest[:16]


def reference_model_file(seed: int = 7) -> Path:
    """The oracle-built F0 backbone with perturbed random weights (cached per machine)."""
    directory = cache_dir() / f"mule-{MULE_VERSION}-reference"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"sfnfnetf0-seed{seed}-{_cache_key(seed)}.keras"
    if not path.exists():
        # Write beside the target, then rename: a concurrent or interrupted build never
        # leaves a half-written file under the final name.
        handle, partial = tempfile.mkstemp(dir=directory, suffix=".keras")
        os.close(handle)
        try:
            run_oracle(BUILD_SCRIPT, partial, str(seed))
            os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
        for stale in directory.glob(f"sfnfnetf0-seed{seed}-*.keras"):
            if stale != path:
                stale.unlink(missing_ok=True)
    return path


def reference_embeddings(model_file: Path, log_mel: np.ndarray, work_dir: Path) -> np.ndarray:
    """The reference file's embeddings of raw log-mel windows [batch, 96, frames]."""
    inputs, outputs = work_dir / "reference_in.npy", work_dir / "reference_out.npy"
    np.save(inputs, np.asarray(log_mel, np.float32))
    run_oracle(EMBED_SCRIPT, str(model_file), str(inputs), str(outputs))
    return np.load(outputs)
