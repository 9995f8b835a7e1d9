"""The reference SF-NFNet-F0 backbone with random weights, built by the oracle (sxmp-mule).

`reference_model(seed)` returns the files of a backbone that the oracle's own code built
exactly as the release was built (backbone only, no projector), with every weight
perturbed so gains, biases, skip gains and SE layers all matter and a swapped weight
cannot hide behind its init value. The one in-memory model is saved twice:
- `.keras` (Keras 2.13 zip, the release's format): what `musicrep model import-mule` reads;
- `.h5` (Keras 2.13 legacy HDF5): what the oracle itself loads (`mule analyze` included:
  its EmbeddingFeature calls `tf.keras.models.load_model` on any path). TF 2.13 reads a
  `.keras` file's weights through a zip stream that Python 3.11 rewinds on every backward
  seek: ~140 s per load of F0 on 2 cores, against ~7 s for the `.h5`.
Building F0 costs ~30-60 s and the files are ~250 MB each, so they are written once per
machine into the oracle cache (MUSICREP_CACHE) under names keyed by the build script, the
seed and the sxmp-mule version; a changed script makes new files and removes stale ones.

`reference_embeddings(model, log_mel, work_dir)` runs the model in the oracle on raw
[batch, 96, frames] log-mel windows, standardising each window as the reference's
SliceExtractor does (mean over the window, std floored at 0.01).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from oracle_env import MULE_VERSION, cache_dir, run_oracle

# The reference front end as a SCOOCH `Analysis` (the values of the release's
# `mule_embedding_average.yml`, SPEC §1): decode with the ffmpeg program at 44.1 kHz,
# resample to 16 kHz, 96-band log-mel. Callers append further `feature_transforms` items.
FRONT_END_CONFIG = """\
Analysis:
  source_feature:
    AudioWaveform:
      input_file:
        AudioFile:
          sample_rate: 44100
      sample_rate: 16000
  feature_transforms:
    - MelSpectrogram:
        n_fft: 2048
        hop_length: 160
        win_length: 400
        window: hann
        n_mels: 96
        fmin: 0.0
        fmax: 8000.0
        norm: 2.0
        mag_compression: log10_nonneg
        htk: true
        power: 2.0
        mag_range: null
        extractor:
          BlockExtractor: null
"""

# The release's timeline settings (3 s windows at 0.5 Hz, then the track average) after the
# reference front end; {model} is the oracle's copy of the random reference weights.
TIMELINE_CONFIG = FRONT_END_CONFIG + """\
    - EmbeddingFeature:
        model_location: "{model}"
        extractor:
          SliceExtractor:
            look_backward: 150
            look_forward: 150
            hop: 200
            standard_normalize: true
    - TimelineAverage:
        extractor:
          BlockExtractor: null
"""

BUILD_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
from mule.models.sfnfnetf0 import SfNfNetF0

out_keras, out_h5, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
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
model.save(out_h5, save_format="h5")

# Keras 2.13's HDF5 writer stores the registered scaled activations in its new format
# ({"module": "builtins", "class_name": "function", "config": NAME}), which its own HDF5
# reader cannot resolve; write them back as the bare registered NAME, as legacy files do.
def legacy_functions(node):
    if isinstance(node, dict):
        if node.get("module") == "builtins" and node.get("class_name") == "function":
            return node["config"]
        return {key: legacy_functions(value) for key, value in node.items()}
    if isinstance(node, list):
        return [legacy_functions(value) for value in node]
    return node

import json
import h5py
with h5py.File(out_h5, "r+") as handle:
    handle.attrs["model_config"] = json.dumps(legacy_functions(json.loads(handle.attrs["model_config"])))
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


@dataclasses.dataclass(frozen=True)
class ReferenceModel:
    keras_file: Path  # the release's format: input of `musicrep model import-mule`
    h5_file: Path  # the same weights, legacy HDF5: fast for the oracle's load_model


def _cache_key(seed: int) -> str:
    digest = hashlib.sha256(f"{MULE_VERSION}\n{seed}\n{BUILD_SCRIPT}".encode()).hexdigest()
    return digest[:16]


def reference_model(seed: int = 7) -> ReferenceModel:
    """The oracle-built F0 backbone with perturbed random weights (cached per machine)."""
    directory = cache_dir() / f"mule-{MULE_VERSION}-reference"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"sfnfnetf0-seed{seed}-{_cache_key(seed)}"
    model = ReferenceModel(directory / f"{stem}.keras", directory / f"{stem}.h5")
    if not (model.keras_file.exists() and model.h5_file.exists()):
        # Build in a scratch folder beside the cache, then rename: a concurrent or
        # interrupted build never leaves a half-written file under a final name.
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            keras_file, h5_file = Path(scratch) / "model.keras", Path(scratch) / "model.h5"
            run_oracle(BUILD_SCRIPT, str(keras_file), str(h5_file), str(seed))
            os.replace(h5_file, model.h5_file)
            os.replace(keras_file, model.keras_file)
        for stale in directory.glob(f"sfnfnetf0-seed{seed}-*"):
            if stale.is_file() and stale.stem != stem:
                stale.unlink(missing_ok=True)
    return model


def reference_embeddings(model: ReferenceModel, log_mel: np.ndarray, work_dir: Path) -> np.ndarray:
    """The reference model's embeddings of raw log-mel windows [batch, 96, frames]."""
    inputs, outputs = work_dir / "reference_in.npy", work_dir / "reference_out.npy"
    np.save(inputs, np.asarray(log_mel, np.float32))
    run_oracle(EMBED_SCRIPT, str(model.h5_file), str(inputs), str(outputs))
    return np.load(outputs)
