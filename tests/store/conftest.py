"""Fixtures of the store tests: a catalog of small objects and a sidecar-only model, so
reembed runs with the model-free compute step (musicrep.pipelines.synthetic)."""
from __future__ import annotations

import functools
import pathlib

import pytest


from musicrep.pipelines import reembed
from musicrep.pipelines.synthetic import SyntheticEmbedding, write_synthetic_export

from store_support import EMBEDDING_SIZE, IN_MEMORY


@pytest.fixture
def synthetic_model(tmp_path) -> str:
    uri = str(tmp_path / "model")
    write_synthetic_export(uri, model_id="synthetic-1", embedding_size=EMBEDDING_SIZE)
    return uri


@pytest.fixture
def run_store(tmp_path, synthetic_model):
    """run_store(catalog_dir, store, *extra args) → reembed.run with the synthetic step."""

    def run(catalog: pathlib.Path, store: str, *extra: str, model: str | None = None) -> int:
        argv = ["--catalog", f"{catalog}/*.bin", "--model", model or synthetic_model, "--store", store, *IN_MEMORY, *extra]
        return reembed.run(argv, make_compute=functools.partial(SyntheticEmbedding))

    return run
