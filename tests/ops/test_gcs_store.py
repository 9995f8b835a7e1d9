"""The reembed store with its catalog on gs://, against the local GCS emulator.

What runs on gcp-storage-emulator: listing a gs:// catalog with google-cloud-storage (size,
`updated`, generation, crc32c, md5), change detection by generation, and the Beam
pipeline reading the changed objects through Beam's GCS filesystem. The Delta table is
on a local disk here: delta-rs needs GCS's XML API, which this emulator does not serve
(501 on listings); test_gcs_delta_store.py puts the table on gs:// (fake-gcs-server).
"""
from __future__ import annotations

import base64
import functools
import hashlib

import pytest
from deltalake import DeltaTable

from musicrep.pipelines import reembed
from musicrep.store import changes, table
from musicrep.pipelines.synthetic import SyntheticEmbedding, write_synthetic_export
from store_support import IN_MEMORY, object_bytes, sha256_of


@pytest.fixture
def gs_catalog(gcs_emulator, tmp_path):
    names = ["a", "b", "sub/c"]
    for name in names:
        blob = gcs_emulator.client().bucket(gcs_emulator.bucket).blob(f"store-catalog/{name}.bin")
        blob.upload_from_string(object_bytes(name))
    return gcs_emulator.url("store-catalog")


def test_a_gs_listing_reports_generation_and_checksums(gcs_emulator, gs_catalog):
    listed = {row["track_id"]: row for row in changes.list_catalog(f"{gs_catalog}/**").to_pylist()}
    assert sorted(listed) == ["a", "b", "sub/c"]
    blob = gcs_emulator.client().bucket(gcs_emulator.bucket).get_blob("store-catalog/a.bin")
    row = listed["a"]
    assert (row["uri"], row["source_size_bytes"]) == (f"{gs_catalog}/a.bin", len(object_bytes("a")))
    assert row["source_generation"] == blob.generation and row["source_generation"] > 0
    assert row["source_md5"] == base64.b64encode(hashlib.md5(object_bytes("a")).digest()).decode()
    assert row["source_crc32c"] == blob.crc32c
    assert [r["track_id"] for r in changes.list_catalog(f"{gs_catalog}/*.bin").to_pylist()] == ["a", "b"]


def test_reembed_of_a_gs_catalog_detects_an_overwrite_by_generation(gcs_emulator, gs_catalog, tmp_path):
    model, store = str(tmp_path / "model"), str(tmp_path / "store")
    write_synthetic_export(model, model_id="synthetic-gs", embedding_size=8)
    run = functools.partial(
        reembed.run,
        ["--catalog", f"{gs_catalog}/**", "--model", model, "--store", store, *IN_MEMORY],
        make_compute=SyntheticEmbedding,
    )
    run()
    first = DeltaTable(store).to_pandas().set_index("track_id")
    assert sorted(first.index) == ["a", "b", "sub/c"] and first["source_generation"].notna().all()
    run()
    assert DeltaTable(store).version() == 1  # nothing changed: no commit

    bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
    bucket.blob("store-catalog/b.bin").upload_from_string(object_bytes("b"))  # same bytes, new generation
    bucket.blob("store-catalog/sub/c.bin").upload_from_string(object_bytes("c", "v2"))
    run()
    last = table.runs(DeltaTable(store), 1)[0]["run"]
    assert (last["plan"]["changed"], last["tracks_embedded"], last["tracks_content_unchanged"]) == (2, 1, 1)
    after = DeltaTable(store).to_pandas().set_index("track_id")
    assert after.loc["sub/c", "content_sha256"] == sha256_of(object_bytes("c", "v2"))
    assert after.loc["b", "source_generation"] == bucket.get_blob("store-catalog/b.bin").generation
    assert after.loc["b", "created_at"] == first.loc["b", "created_at"]  # kept: same bytes
