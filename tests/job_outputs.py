"""Reading a job's committed output the way readers do: through its manifest."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from musicrep.manifest import MANIFEST_NAME, committed_files, read_manifest

_RUN_ID = re.compile(r"-\d{8}T\d{6}Z-[0-9a-f]{6}-")


def without_run_id(name: str) -> str:
    """`embeddings-20261130T145003Z-b4978b-00000-of-00001.parquet` → `embeddings-00000-of-00001.parquet`."""
    return _RUN_ID.sub("-", name)


def committed(output_dir: str, kind: str) -> list[str]:
    manifest = read_manifest(output_dir)
    assert manifest is not None, f"{output_dir} has no manifest"
    return committed_files(manifest, output_dir, kind)


def read_dead_letters(output_dir: str) -> list[dict]:
    errors = []
    for path in committed(output_dir, "errors"):
        with open(path, encoding="utf-8") as handle:
            errors += [json.loads(line) for line in handle if line.strip()]
    return errors


def assert_only_committed(output_dir: str) -> dict:
    """The directory holds the manifest and exactly the files it lists: no earlier run's
    file, no staging folder, no Beam temp folder. Returns the manifest."""
    manifest = read_manifest(output_dir)
    assert manifest is not None, f"{output_dir} has no manifest"
    listed = {entry["name"] for entry in manifest["files"]}
    assert sorted(os.listdir(output_dir)) == sorted(listed | {MANIFEST_NAME})
    for entry in manifest["files"]:
        assert os.path.getsize(os.path.join(output_dir, entry["name"])) == entry["size_bytes"]
    return manifest


def read_embeddings(output_dir: str) -> pd.DataFrame:
    """The committed rows; the directory holds nothing else and the manifest counts them."""
    manifest = assert_only_committed(output_dir)
    files = committed(output_dir, "embeddings")
    table = pd.concat([pq.read_table(f).to_pandas() for f in files]).set_index("track_id").sort_index()
    assert manifest["counts"]["embeddings"] == len(table)
    assert not table.index.duplicated().any()
    return table


def log_mels(output_dir: str) -> dict[str, bytes]:
    """track_id → the log-mel bytes of the committed shards."""
    from musicrep.contracts.shard_dataset import read_shards

    return {e["track_id"].numpy().decode(): e["log_mel"].numpy().tobytes() for e in read_shards(output_dir)}


def embeddings(output_dir: str) -> dict[str, np.ndarray]:
    """track_id → the committed embedding (float32), read as `read_embeddings` reads them."""
    return {track: np.asarray(vector, np.float32) for track, vector in read_embeddings(output_dir)["embedding"].items()}


def dead_letter_stages(output_dir: str) -> list[tuple[str, str]]:
    """Sorted (track_id, stage) of the committed dead letters."""
    return sorted((e["track_id"], e["stage"]) for e in read_dead_letters(output_dir))
