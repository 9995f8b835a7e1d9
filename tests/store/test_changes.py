"""Change detection: listing vs the table's index, by hand-made examples."""
from __future__ import annotations

import pyarrow as pa
import pytest

from musicrep.errors import ConfigError
from musicrep.contracts import schema
from musicrep.store import changes, table
from musicrep.store.changes import LISTING_SCHEMA

CONFIG_COLUMNS = schema.config_columns(schema.store_schema(4))
ALL_SETTINGS = {
    "model_id": "m1", "feature_config_sha256": "f1", "window_spec": "w1", "precision": "p1", "engine": "e1",
}
OTHER_SETTINGS = {
    "model_id": "m2", "feature_config_sha256": "f2", "window_spec": "w2", "precision": "p2", "engine": "e2",
}
SETTINGS = {name: ALL_SETTINGS[name] for name in CONFIG_COLUMNS}


def listing(*rows) -> pa.Table:
    keys = ("track_id", "uri", "source_size_bytes", "source_mtime_s", "source_generation")
    return pa.Table.from_pylist([dict(zip(keys, row)) for row in rows], schema=LISTING_SCHEMA)


def index(*rows) -> pa.Table:
    arrow_schema = schema.store_schema(4)
    columns = schema.index_columns(arrow_schema)
    fields = [arrow_schema.field(c) for c in columns] + [pa.field(table.DATA_FILE, pa.string())]
    records = []
    for track_id, uri, size, mtime, generation, data_file, settings in rows:
        records.append({
            "track_id": track_id, "uri": uri, "content_sha256": f"sha-{track_id}", "source_size_bytes": size,
            "source_mtime_s": mtime, "source_generation": generation, **{**SETTINGS, **settings},
            table.DATA_FILE: data_file,
        })
    return pa.Table.from_pylist(records, schema=pa.schema(fields))


def test_each_kind_of_change_is_found_from_metadata_alone():
    listed = listing(
        ("same", "c/same.mp3", 10, 1.0, None),
        ("new", "c/new.mp3", 10, 1.0, None),
        ("resized", "c/resized.mp3", 11, 1.0, None),
        ("touched", "c/touched.mp3", 10, 2.0, None),
        ("moved", "c/moved.ogg", 10, 1.0, None),
        ("other_hop", "c/other_hop.mp3", 10, 1.0, None),
    )
    rows = index(
        ("same", "c/same.mp3", 10, 1.0, None, "data/a.parquet", {}),
        ("resized", "c/resized.mp3", 10, 1.0, None, "data/a.parquet", {}),
        ("touched", "c/touched.mp3", 10, 1.0, None, "data/b.parquet", {}),
        ("moved", "c/moved.mp3", 10, 1.0, None, "data/b.parquet", {}),
        ("other_hop", "c/other_hop.mp3", 10, 1.0, None, "data/b.parquet", {"model_id": "m0"}),
        ("gone", "c/gone.mp3", 10, 1.0, None, "data/c.parquet", {}),
    )
    plan = changes.plan_run(listed, rows, SETTINGS)
    assert {k: plan.counts[k] for k in ("listed", "new", "changed", "stale", "deleted", "unchanged")} == {
        "listed": 6, "new": 1, "changed": 3, "stale": 1, "deleted": 1, "unchanged": 1,
    }
    compute = {r["track_id"]: r["known_sha256"] for r in plan.compute.to_pylist()}
    # a changed object may keep its row if its bytes hash the same; a stale or new one may not
    assert compute == {"new": None, "resized": "sha-resized", "touched": "sha-touched", "moved": "sha-moved", "other_hop": None}
    rewrite = [(r[table.DATA_FILE], r["track_id"], r["keep_if_unchanged"]) for r in plan.rewrite.to_pylist()]
    assert rewrite == [
        ("data/a.parquet", "resized", True), ("data/b.parquet", "moved", True),
        ("data/b.parquet", "other_hop", False), ("data/b.parquet", "touched", True),
    ]
    assert plan.rewrite.to_pylist()[3]["source_mtime_s"] == 2.0  # the listing's, for a kept row
    assert plan.removed_files == ["data/c.parquet"]  # all its rows go: no rewrite needed


@pytest.mark.parametrize("setting", CONFIG_COLUMNS)
def test_any_other_setting_makes_every_row_stale(setting):
    rows = index(("a", "a.mp3", 1, 1.0, None, "d.parquet", {}), ("b", "b.mp3", 1, 1.0, None, "d.parquet", {}))
    new_settings = {**SETTINGS, setting: OTHER_SETTINGS[setting]}
    plan = changes.plan_run(listing(("a", "a.mp3", 1, 1.0, None), ("b", "b.mp3", 1, 1.0, None)), rows, new_settings)
    assert (plan.counts["stale"], plan.counts["unchanged"], plan.compute.num_rows) == (2, 0, 2)


def test_generation_decides_where_the_listing_has_one():
    rows = index(("a", "gs://b/a", 5, 1.0, 7, "d.parquet", {}), ("b", "gs://b/b", 5, 1.0, 7, "d.parquet", {}))
    # a: metadata update only (new `updated` time, same generation); b: overwritten
    plan = changes.plan_run(listing(("a", "gs://b/a", 5, 9.0, 7), ("b", "gs://b/b", 5, 1.0, 8)), rows, SETTINGS)
    assert (plan.counts["unchanged"], plan.counts["changed"]) == (1, 1)
    assert plan.compute.column("track_id").to_pylist() == ["b"]


def test_verify_content_reads_every_object_and_nothing_else_changes():
    rows = index(("a", "a.mp3", 1, 1.0, None, "d.parquet", {}))
    plan = changes.plan_run(listing(("a", "a.mp3", 1, 1.0, None)), rows, SETTINGS, verify_content=True)
    assert (plan.counts["unchanged"], plan.counts["verified"]) == (1, 1)
    assert plan.compute.to_pylist()[0]["known_sha256"] == "sha-a"
    assert not changes.plan_run(listing(("a", "a.mp3", 1, 1.0, None)), rows, SETTINGS).compute.num_rows


def test_duplicate_track_ids_keep_the_first_uri(tmp_path):
    plan = changes.plan_run(listing(("a", "x/a.mp3", 1, 1.0, None), ("a", "x/a.flac", 1, 1.0, None)), index(), SETTINGS)
    assert plan.compute.column("uri").to_pylist() == ["x/a.flac"] and plan.duplicates == ["x/a.mp3"]


def test_listing_a_local_glob_reports_size_and_mtime(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.mp3").write_bytes(b"12345")
    listed = changes.list_catalog(f"{tmp_path}/**/*.mp3").to_pylist()
    assert [(r["track_id"], r["source_size_bytes"], r["source_generation"]) for r in listed] == [("sub/x", 5, None)]
    assert listed[0]["source_mtime_s"] == (tmp_path / "sub" / "x.mp3").stat().st_mtime
    with pytest.raises(ConfigError, match="no files match"):
        changes.list_catalog(f"{tmp_path}/*.flac")
