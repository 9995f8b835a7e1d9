"""The model export every job reads: `<uri>/model.keras` plus the sidecar `<uri>/model.json`
(musicrep.contracts.sidecar: what the weights expect, read without TensorFlow).

`uri` is a local directory or any URL musicrep.fileio reads (gs://, …); files are copied
through a local temporary file because Keras loads only from local paths.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

import keras
import numpy as np

from musicrep import fileio
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.contracts.sidecar import MODEL_FILE, SIDECAR_FILE, ExportMetadata, read_metadata
from musicrep.errors import MusicrepError
from musicrep.model import layers  # noqa: F401  (registers the custom layers for load_model)
from musicrep.model.sf_nfnet import MIN_FRAMES, N_MELS, SFNFNetConfig

logger = logging.getLogger(__name__)


def compute_model_id(model: keras.Model, config: SFNFNetConfig) -> str:
    """sha256 over the config and every weight (path, shape, float32 little-endian bytes)."""
    digest = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode())
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight), dtype="<f4")
        digest.update(f"{weight.path}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _join(uri: str, name: str) -> str:
    return fileio.join(uri, name)


def _copy_out(local_path: str, uri: str) -> None:
    with open(local_path, "rb") as source, fileio.open_write(uri) as target:
        shutil.copyfileobj(source, target, length=16 << 20)


def save(
    model: keras.Model,
    uri: str,
    *,
    config: SFNFNetConfig,
    feature_config: FeatureConfig = DEFAULT_FEATURE_CONFIG,
    source: str,
) -> ExportMetadata:
    """Write `model` and its sidecar under `uri`; `source` records where the weights came from."""
    metadata = ExportMetadata(
        model_id=compute_model_id(model, config),
        config=json.loads(json.dumps(config.to_dict())),  # lists, as read back
        feature_config=json.loads(feature_config.to_json()),
        feature_config_sha256=feature_config.sha256(),
        embedding_size=config.embedding_size,
        n_mels=N_MELS,
        min_frames=MIN_FRAMES,
        n_parameters=int(model.count_params()),
        source=source,
    )
    with tempfile.TemporaryDirectory(prefix="musicrep-export-") as tmp:
        local_model = os.path.join(tmp, MODEL_FILE)
        model.save(local_model)
        _copy_out(local_model, _join(uri, MODEL_FILE))
    # The sidecar goes last: a directory with a sidecar is a complete export.
    fileio.write_text(_join(uri, SIDECAR_FILE), metadata.to_json())
    logger.info("saved model %s to %s", metadata.model_id[:12], uri)
    return metadata


def load(uri: str, *, verify: bool = True, metadata: ExportMetadata | None = None) -> keras.Model:
    """Load the export at `uri` (local directory or gs://…); `verify` rechecks `model_id`.
    `metadata`: its sidecar, when the caller has read it already."""
    metadata = metadata or read_metadata(uri)
    with tempfile.TemporaryDirectory(prefix="musicrep-load-") as tmp:
        local_model = os.path.join(tmp, MODEL_FILE)
        with fileio.open_read(_join(uri, MODEL_FILE)) as source, open(local_model, "wb") as target:
            shutil.copyfileobj(source, target, length=16 << 20)
        model = keras.saving.load_model(local_model, compile=False)
    if verify:
        actual = compute_model_id(model, SFNFNetConfig.from_dict(metadata.config))
        if actual != metadata.model_id:
            raise MusicrepError(
                f"{uri}: weights hash to {actual}, but the sidecar says {metadata.model_id}"
            )
    logger.info("loaded model %s from %s", metadata.model_id[:12], uri)
    return model
