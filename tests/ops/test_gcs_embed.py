"""The embed job and the re-embedding store on gs://, against the local GCS emulator.

Shards, model export, output and store all live in the emulator's bucket; the jobs reach
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
from musicrep.model import SF_NFNET_VARIANTS
from musicrep.pipelines import embed, features, reembed

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
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def gs_blobs(gcs_emulator, prefix: str) -> dict[str, bytes]:
    names = [url.split("/", 3)[3] for url in gcs_emulator.list(prefix)]
    return {name.rsplit("/", 1)[-1]: gcs_emulator.read_bytes(name) for name in names}


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
    assert sorted(on_gs) == sorted(local) == ["embeddings-00000-of-00001.parquet", "errors-00000-of-00001.jsonl"]
    rows = parquet_rows(on_gs)
    assert sorted(rows.index) == sorted(DURATIONS_S)
    assert (rows["model_id"] == saved.model_id).all()
    assert_same_rows(rows, parquet_rows(local))
    assert pq.read_schema(io.BytesIO(on_gs["embeddings-00000-of-00001.parquet"])).equals(
        pq.read_schema(io.BytesIO(local["embeddings-00000-of-00001.parquet"])), check_metadata=True)
    errors = [json.loads(line) for line in on_gs["errors-00000-of-00001.jsonl"].decode().splitlines()]
    assert [(e["track_id"], e["stage"]) for e in errors] == [("blip", "too_short")]
    assert on_gs["errors-00000-of-00001.jsonl"] == local["errors-00000-of-00001.jsonl"]


def test_reembed_store_on_gs_computes_nothing_the_second_time(gcs_emulator, catalog, tiny_model, capsys):
    network, config, _ = tiny_model
    model_uri = gcs_emulator.url("reembed", "models", "tiny")
    musicrep.model.save(network, model_uri, config=config, source="test")
    gcs_emulator.upload_dir(catalog, "reembed/catalog")
    store = gcs_emulator.url("reembed", "store")
    # Beam's GCS glob turns "**" into ".*": "catalog/**/*.flac" would miss catalog/a.flac
    # (it needs a "/" after catalog/), while the local glob lets "**/" match no folder.
    args = ["--catalog", gcs_emulator.url("reembed/catalog/**"), "--model", model_uri, "--store", store,
            "--shards=1", *RUNNER]

    reembed.run(args)
    first = gs_blobs(gcs_emulator, "reembed/store/current/")
    assert sorted(parquet_rows(first).index) == sorted(DURATIONS_S)

    reembed.run(args)
    runs = reembed.read_runs(store)
    assert [(r["tracks_embedded"], r["windows_embedded"], r["tracks_unchanged"], r["changed"]) for r in runs] == [
        (3, 6, 0, True),  # a: 3 windows, b: 1, sub/c: 2
        (0, 0, 3, False),
    ]
    assert gs_blobs(gcs_emulator, "reembed/store/current/") == first  # byte for byte
    assert gcs_emulator.list("reembed/store/staging-") == []  # no staging left behind
    assert "store left as it was" in capsys.readouterr().out.splitlines()[-1]
