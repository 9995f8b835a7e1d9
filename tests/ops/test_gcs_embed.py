"""The embed job on gs://, against the local GCS emulator (the reembed store: test_gcs_store.py).

Shards, model export and output all live in the emulator's bucket; the jobs reach
them only through Beam's FileSystems (and the model through musicrep.model.export), as
they would on Dataflow. The same run on local paths is the reference.
"""
from __future__ import annotations

import io
import json

import keras
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import musicrep.model
from audio_files import tone, write_audio
from job_outputs import without_run_id
from musicrep.model import SF_NFNET_VARIANTS
from musicrep.pipelines import embed, features

RUNNER = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
DURATIONS_S = {"a": 6.0, "b": 3.0, "sub/c": 4.5}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    (root / "sub").mkdir()
    for i, (track_id, duration_s) in enumerate(DURATIONS_S.items()):
        write_audio(str(root / f"{track_id}.flac"), tone(220.0 * (1 + i / 3), duration_s, 44100), 44100)
    write_audio(str(root / "blip.flac"), tone(880.0, 0.1, 44100), 44100)  # too short: a dead letter
    return root


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The network, saved once: a local export to compare against, and the model to upload."""
    keras.utils.set_random_seed(11)
    config = SF_NFNET_VARIANTS["tiny"]
    network = musicrep.model.build_sf_nfnet(config)
    local = str(tmp_path_factory.mktemp("model") / "tiny")
    musicrep.model.save(network, local, config=config, source="test")
    return network, config, local


def parquet_rows(blobs: dict[str, bytes]) -> pd.DataFrame:
    tables = [pq.read_table(io.BytesIO(data)).to_pandas() for name, data in sorted(blobs.items())
              if name.rsplit("/", 1)[-1].startswith("embeddings-")]
    return pd.concat(tables).set_index("track_id").sort_index()


def local_blobs(directory) -> dict[str, bytes]:
    """Every file below `directory` by its path there, run ids taken out of the names."""
    return {without_run_id(str(path.relative_to(directory))): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def gs_blobs(gcs_emulator, prefix: str) -> dict[str, bytes]:
    names = [url.split("/", 3)[3] for url in gcs_emulator.list(prefix)]
    return {without_run_id(name[len(prefix):]): gcs_emulator.read_bytes(name) for name in names}


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    columns = [c for c in expected.columns if c not in ("created_at", "embedding")]
    pd.testing.assert_frame_equal(actual[columns], expected[columns])
    np.testing.assert_allclose(np.stack(actual["embedding"]), np.stack(expected["embedding"]), rtol=0, atol=1e-6)


def test_embed_job_on_gs_equals_the_local_run(gcs_emulator, catalog, tiny_model, tmp_path):
    network, config, local_model = tiny_model
    model_uri = gcs_emulator.url("embed-job", "models", "tiny")
    saved = musicrep.model.save(network, model_uri, config=config, source="test")
    assert saved.model_id == musicrep.model.read_metadata(local_model).model_id  # same weights, same id

    shards = tmp_path / "features"
    features.run(["--input", f"{catalog}/**/*.flac", "--output", str(shards), "--shards=1", *RUNNER])
    gcs_emulator.upload_dir(shards, "embed-job/features")

    embed.run(["--features", gcs_emulator.url("embed-job/features/features-*"), "--model", model_uri,
               "--output", gcs_emulator.url("embed-job/out"), "--shards=1", *RUNNER])
    embed.run(["--features", f"{shards}/features-*", "--model", local_model,
               "--output", str(tmp_path / "out"), "--shards=1", *RUNNER])

    on_gs, local = gs_blobs(gcs_emulator, "embed-job/out/"), local_blobs(tmp_path / "out")
    # The committed files and their manifest, nothing else (no staging or Beam temp objects).
    assert sorted(on_gs) == sorted(local) == ["_MANIFEST.json", "embeddings-00000-of-00001.parquet", "errors-00000-of-00001.jsonl"]
    counts = json.loads(on_gs["_MANIFEST.json"])["counts"]
    assert counts == json.loads(local["_MANIFEST.json"])["counts"]
    assert (counts["embeddings"], counts["errors"]) == (len(DURATIONS_S), 1)
    rows = parquet_rows(on_gs)
    assert sorted(rows.index) == sorted(DURATIONS_S)
    assert (rows["model_id"] == saved.model_id).all()
    assert_same_rows(rows, parquet_rows(local))
    assert pq.read_schema(io.BytesIO(on_gs["embeddings-00000-of-00001.parquet"])).equals(
        pq.read_schema(io.BytesIO(local["embeddings-00000-of-00001.parquet"])), check_metadata=True)
    errors = [json.loads(line) for line in on_gs["errors-00000-of-00001.jsonl"].decode().splitlines()]
    assert [(e["track_id"], e["stage"]) for e in errors] == [("blip", "too_short")]
    assert on_gs["errors-00000-of-00001.jsonl"] == local["errors-00000-of-00001.jsonl"]
