"""Fixtures and markers shared by every test folder."""
import functools

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20221003)


@functools.cache
def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def pytest_collection_modifyitems(config, items):
    # `gpu` tests run the GPU code paths where a GPU is present and are skipped elsewhere;
    # TensorFlow is asked only when such a test was collected.
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_items and not _has_gpu():
        skip = pytest.mark.skip(reason="needs a GPU (tf.config.list_physical_devices('GPU') is empty)")
        for item in gpu_items:
            item.add_marker(skip)
