"""Import the released MULE backbone (`model.keras`, Keras 2.13 format) into our SF-NFNet-F0.

The file is a zip of `config.json` (the functional graph) and `model.weights.h5`. We read
both directly — no TensorFlow 2.13, no reference code — and map weights by what the
reference's layers are, not by their names:

- h5 groups are named `<snake_case class>[_<n>]`, numbered in the order of the config's
  layer list (Keras 2.13 `saving_lib` container naming), where a layer with weights
  uses two numbers (the functional model lists it twice; only the first is written);
- the config names carry Keras' auto-naming counter (`weight_standardization_17`), which
  records creation order. The reference creates layers in a fixed order (slow stems,
  fast stems, all slow stages, all fast stages, fusions), which `_reference_order` mirrors.

Every mapped kernel's shape, stride and group count, every β/α constant and every
stochastic-depth rate is checked against our model before any weight is copied, so a
file of another architecture fails loudly instead of loading wrongly.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import zipfile
from collections import defaultdict
from typing import Any

import h5py
import keras
import numpy as np

from musicrep import fileio
from musicrep.errors import ConfigError
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, SFNFNetConfig, build_sf_nfnet

logger = logging.getLogger(__name__)

REFERENCE_ACTIVATION = "_scaled_gelu_activation"
# Reference constants are Python floats rounded to float32 when applied.
CONSTANT_TOLERANCE = 1e-6


def _snake_case(class_name: str) -> str:
    """Keras 2's layer-class → snake_case rule (`TFOpLambda` → `tf_op_lambda`)."""
    words = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", words).lower()


def _creation_index(name: str) -> int:
    """Keras auto-name counter: `dense` → 0, `dense_12` → 12."""
    match = re.fullmatch(r"[a-z_]+?(?:_(\d+))?", name)
    if match is None:
        raise ConfigError(f"reference layer name {name!r} is not a Keras auto-generated name")
    return int(match.group(1) or 0)


def _h5_arrays(group: h5py.Group) -> list[np.ndarray]:
    vars_group = group.get("vars")
    if vars_group is None:
        return []
    return [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]


class ReferenceFile:
    """The layers of a Keras 2.13 `.keras` file, by class, in creation order, with their weights."""

    def __init__(self, path: str) -> None:
        with zipfile.ZipFile(path) as archive:
            self.graph = json.loads(archive.read("config.json"))
            with tempfile.TemporaryDirectory(prefix="musicrep-mule-") as tmp:
                weights_path = archive.extract("model.weights.h5", tmp)
                self.by_class = self._read(weights_path)

    def _read(self, weights_path: str) -> dict[str, list[dict[str, Any]]]:
        layers = self.graph["config"]["layers"]
        used: dict[str, int] = defaultdict(int)
        by_class: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with h5py.File(weights_path, "r") as weights:
            container = weights["_layer_checkpoint_dependencies"]
            for layer in layers:
                base = _snake_case(layer["class_name"])
                key = base if used[base] == 0 else f"{base}_{used[base]}"
                used[base] += 1
                group = container[key]
                entry = {
                    "name": layer["name"],
                    "config": layer["config"],
                    "vars": _h5_arrays(group),
                    "inner_vars": _h5_arrays(group["layer"]) if "layer" in group else [],
                }
                if entry["vars"] or entry["inner_vars"]:
                    # A layer with weights is listed twice (`layer_with_weights-i`, then
                    # `layer-j`); the second, skipped as already saved, still takes a number.
                    used[base] += 1
                by_class[layer["class_name"]].append(entry)
        return by_class

    def layers(self, class_name: str) -> list[dict[str, Any]]:
        """The layers of one class in creation order."""
        return sorted(self.by_class.get(class_name, []), key=lambda entry: _creation_index(entry["name"]))


def _reference_order(config: SFNFNetConfig) -> dict[str, list[str]]:
    """Our layer names in the reference's creation order, per kind of weighted layer."""
    convs = [f"{path}_stem_conv{i}" for path in ("slow", "fast") for i in range(1, 5)]
    blocks = [
        f"{path}_stage{stage}_block{block}"
        for path in ("slow", "fast")
        for stage, depth in enumerate(config.depths, start=1)
        for block in range(depth)
    ]
    for block in blocks:
        convs += [f"{block}_conv{i}" for i in range(1, 5)]
        if block.endswith("_block0"):
            convs.append(f"{block}_shortcut")
    for stage in range(1, len(config.depths) + 1):
        convs += [f"fusion{stage}_time_conv", f"fusion{stage}_proj_conv"]
    return {"convs": convs, "blocks": blocks}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(f"reference file does not match SF-NFNet-F0: {message}")


def _check_convs(reference: ReferenceFile, model: keras.Model, names: list[str]) -> list[tuple[str, list[np.ndarray]]]:
    entries = reference.layers("WeightStandardization")
    _expect(len(entries) == len(names), f"{len(entries)} weight-standardised convs, expected {len(names)}")
    assignments = []
    for entry, name in zip(entries, names):
        ours = model.get_layer(name)
        conv = entry["config"]["layer"]["config"]
        kernel, gain = entry["vars"]
        (bias,) = entry["inner_vars"]
        _expect(
            kernel.shape == tuple(ours.kernel.shape)
            and tuple(conv["strides"]) == tuple(ours.strides)
            and conv["groups"] == ours.groups
            and conv["padding"] == "same",
            f"{entry['name']} ({kernel.shape}, strides {conv['strides']}, groups {conv['groups']}) "
            f"vs our {name} ({tuple(ours.kernel.shape)}, strides {ours.strides}, groups {ours.groups})",
        )
        assignments.append((name, [kernel, bias, gain]))
    return assignments


def _check_blocks(reference: ReferenceFile, model: keras.Model, blocks: list[str]) -> list[tuple[str, list[np.ndarray]]]:
    dense = reference.layers("Dense")
    _expect(len(dense) == 2 * len(blocks), f"{len(dense)} dense layers, expected {2 * len(blocks)}")
    scalars = reference.layers("ScalarMultiply")
    _expect(len(scalars) == 3 * len(blocks), f"{len(scalars)} scalar multiplies, expected {3 * len(blocks)}")
    depth = reference.layers("StochDepth")
    _expect(len(depth) == len(blocks), f"{len(depth)} stochastic-depth layers, expected {len(blocks)}")
    assignments = []
    for index, block in enumerate(blocks):
        beta, skip_gain, alpha = scalars[3 * index : 3 * index + 3]
        for entry, layer_name, learnable in ((beta, "beta", False), (skip_gain, "skip_gain", True), (alpha, "alpha", False)):
            _expect(entry["config"]["learnable"] == learnable, f"{entry['name']} learnable flag, block {block}")
            if not learnable:
                ours = model.get_layer(f"{block}_{layer_name}").init_value
                _expect(
                    math.isclose(entry["config"]["init_gain"], ours, abs_tol=CONSTANT_TOLERANCE),
                    f"{block} {layer_name} {entry['config']['init_gain']} vs ours {ours}",
                )
        drop = 1.0 - depth[index]["config"]["survival_probability"]
        ours_drop = model.get_layer(f"{block}_out").drop_rate
        _expect(math.isclose(drop, ours_drop, abs_tol=CONSTANT_TOLERANCE), f"{block} drop rate {drop} vs {ours_drop}")
        squeeze, excite = dense[2 * index], dense[2 * index + 1]
        se = model.get_layer(f"{block}_se")
        se_weights = [*squeeze["vars"], *excite["vars"]]
        _expect(
            [w.shape for w in se_weights] == [tuple(w.shape) for w in se.weights],
            f"{block} squeeze-excite shapes {[w.shape for w in se_weights]}",
        )
        assignments.append((f"{block}_se", se_weights))
        assignments.append((f"{block}_skip_gain", skip_gain["vars"]))
    return assignments


def _check_activations(reference: ReferenceFile) -> None:
    for entry in reference.layers("Activation"):
        activation = entry["config"]["activation"]
        name = activation.get("config") if isinstance(activation, dict) else activation
        _expect(name == REFERENCE_ACTIVATION, f"{entry['name']} uses activation {name!r}")


def import_mule(path: str) -> keras.Model:
    """Our SF-NFNet-F0 carrying the weights of the reference backbone file at local `path`."""
    reference = ReferenceFile(path)
    config = SF_NFNET_VARIANTS["F0"]
    model = build_sf_nfnet(config)
    order = _reference_order(config)
    _check_activations(reference)
    assignments = _check_convs(reference, model, order["convs"]) + _check_blocks(reference, model, order["blocks"])
    assigned = 0
    for name, weights in assignments:
        model.get_layer(name).set_weights(weights)
        assigned += sum(w.size for w in weights)
    _expect(assigned == model.count_params(), f"copied {assigned} of {model.count_params()} parameters")
    logger.info("imported %d parameters from %s", assigned, path)
    return model


def fetch_local(uri: str, directory: str) -> str:
    """Copy `uri` (local or gs://) into `directory`; returns the local path."""
    local = os.path.join(directory, fileio.basename(uri) or "model.keras")
    with fileio.open_read(uri) as source, open(local, "wb") as target:
        shutil.copyfileobj(source, target, length=16 << 20)
    return local
