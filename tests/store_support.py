"""Helpers of the store tests (tests/store, tests/ops): small catalog objects."""
from __future__ import annotations

import hashlib
import pathlib

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]
EMBEDDING_SIZE = 16


def object_bytes(name: str, salt: str = "") -> bytes:
    return f"{name}{salt}".encode() * 8


def write_objects(root: pathlib.Path, names, *, salt: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / f"{name}.bin").write_bytes(object_bytes(name, salt))


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
