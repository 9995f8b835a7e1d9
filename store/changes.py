"""Change detection: the catalog listing against the table's index, without reading audio.

A listed object is *new* (no row), *changed* (its size, GCS generation — or mtime where
there is none — or URI differs from the row's), *stale* (its row was made with another
model, front end, window setting, aggregate, precision or engine), or *unchanged*. Rows
whose track is no longer listed are *deleted*. New, changed and stale objects are read;
a changed object whose bytes hash to the row's `content_sha256` keeps its embedding and
only gets the new source columns. With `verify_content`, unchanged objects are read
and hashed too (for catalogs whose object metadata cannot be trusted).
"""
from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pandas as pd
import pyarrow as pa

from musicrep import fileio
from musicrep.errors import ConfigError
from musicrep.contracts.schema import SOURCE_FIELDS
from musicrep.contracts.tracks import glob_prefix, is_manifest, track_id_for
from musicrep.store.table import DATA_FILE

logger = logging.getLogger(__name__)

LISTING_SCHEMA = pa.schema([pa.field("track_id", pa.string()), pa.field("uri", pa.string()), *SOURCE_FIELDS])
# What the pipeline is told to compute; `known_sha256` is the row's hash where the
# embedding may be kept if the bytes did not change.
COMPUTE_SCHEMA = pa.schema([*LISTING_SCHEMA, pa.field("known_sha256", pa.string())])
# Rows of existing data files this run may supersede: rows of changed objects stay (with
# the listing's source columns) if their bytes hash as before (`keep_if_unchanged`);
# rows of deleted or stale tracks go whatever happens.
REWRITE_SCHEMA = pa.schema(
    [
        pa.field(DATA_FILE, pa.string()),
        pa.field("track_id", pa.string()),
        pa.field("keep_if_unchanged", pa.bool_()),
        *SOURCE_FIELDS,
    ]
)


@dataclasses.dataclass
class Plan:
    """What one run has to do; counts per kind."""

    compute: pa.Table  # COMPUTE_SCHEMA
    rewrite: pa.Table  # REWRITE_SCHEMA: rows of files the pipeline may have to rewrite
    removed_files: list[str]  # data files all of whose rows go: removed without a rewrite
    counts: dict[str, int]
    duplicates: list[str]  # URIs not used because another URI has the same track id

    @property
    def nothing_to_do(self) -> bool:
        return self.compute.num_rows == 0 and self.rewrite.num_rows == 0 and not self.removed_files


def list_catalog(pattern: str) -> pa.Table:
    """The catalog's objects (LISTING_SCHEMA), one per track id (first URI in sorted order).

    Local globs use Beam's matcher (size, mtime); gs:// globs list the bucket with
    google-cloud-storage, which also reports generation, crc32c and md5."""
    if is_manifest(pattern):
        raise ConfigError(
            f"reembed needs a glob for --catalog (it compares the listing's size and modification "
            f"time with the store), got the manifest {pattern!r}"
        )
    prefix = glob_prefix(pattern)
    if pattern.startswith("gs://"):
        rows = _list_gcs(pattern)
    else:
        rows = [
            {"uri": info.path, "source_size_bytes": info.size_bytes, "source_mtime_s": info.mtime_s}
            for info in fileio.list_files(pattern)
        ]
    if not rows:
        raise ConfigError(f"no files match {pattern!r}")
    frame = pd.DataFrame(rows)
    frame.insert(0, "track_id", [track_id_for(uri, prefix) for uri in frame["uri"]])
    for name in LISTING_SCHEMA.names:
        if name not in frame:
            frame[name] = None
    return pa.Table.from_pandas(frame[LISTING_SCHEMA.names], schema=LISTING_SCHEMA, preserve_index=False)


def _list_gcs(pattern: str) -> list[dict]:
    from apache_beam.io.filesystem import FileSystem
    from google.cloud import storage

    bucket, _, _ = pattern[len("gs://") :].partition("/")
    prefix = glob_prefix(pattern)[len(f"gs://{bucket}/") :]
    matches = re.compile(FileSystem.translate_pattern(pattern)).match
    rows = []
    for blob in storage.Client().list_blobs(bucket, prefix=prefix or None):
        uri = f"gs://{bucket}/{blob.name}"
        if blob.name.endswith("/") or not matches(uri):
            continue
        rows.append(
            {
                "uri": uri,
                "source_size_bytes": int(blob.size),
                "source_mtime_s": blob.updated.timestamp() if blob.updated else None,
                "source_generation": int(blob.generation) if blob.generation else None,
                "source_crc32c": blob.crc32c,
                "source_md5": blob.md5_hash,
            }
        )
    return rows


def plan_run(listing: pa.Table, index: pa.Table, settings: dict, *, verify_content: bool = False) -> Plan:
    """Compares the listing with the table's index (store.table.read_index) for a run whose
    rows will carry `settings` (config column → value)."""
    listed = listing.to_pandas()
    duplicated = listed.sort_values("uri").duplicated("track_id", keep="first")
    duplicates = sorted(listed.loc[duplicated, "uri"])
    listed = listed.loc[~duplicated]
    rows = index.to_pandas()
    merged = listed.merge(rows, on="track_id", how="outer", suffixes=("", "_row"), indicator=True)
    present = merged["_merge"] == "both"
    new = merged["_merge"] == "left_only"
    deleted = merged["_merge"] == "right_only"

    same_config = pd.Series(True, index=merged.index)
    for name, value in settings.items():
        column = merged[name]
        same_config &= column.isna() if value is None else (column == _as_stored(index, name, value))
    same_source = (merged["uri"] == merged["uri_row"]) & (
        merged["source_size_bytes"] == merged["source_size_bytes_row"]
    )
    has_generation = merged["source_generation"].notna()
    same_source &= np.where(
        has_generation,
        merged["source_generation"] == merged["source_generation_row"],
        merged["source_mtime_s"] == merged["source_mtime_s_row"],
    )
    stale = present & ~same_config
    changed = present & same_config & ~same_source
    unchanged = present & same_config & same_source
    verified = unchanged if verify_content else pd.Series(False, index=merged.index)

    computed = merged[new | stale | changed | verified].copy()
    keep_if_same = (changed | verified)[computed.index]
    computed["known_sha256"] = computed["content_sha256"].where(keep_if_same, None)
    superseded = merged[stale | changed | verified | deleted].copy()
    superseded["keep_if_unchanged"] = (changed | verified)[superseded.index]
    rows_per_file = rows[DATA_FILE].value_counts()
    dropped_per_file = superseded.loc[~superseded["keep_if_unchanged"], DATA_FILE].value_counts()
    emptied = dropped_per_file.index[dropped_per_file.eq(rows_per_file.reindex(dropped_per_file.index))]
    removed_files = sorted(emptied)
    superseded = superseded[~superseded[DATA_FILE].isin(emptied)]
    counts = {
        "listed": int(len(listed)),
        "new": int(new.sum()),
        "changed": int(changed.sum()),
        "stale": int(stale.sum()),
        "deleted": int(deleted.sum()),
        "unchanged": int(unchanged.sum()),
        "verified": int(verified.sum()),
        "duplicates": len(duplicates),
    }
    return Plan(
        compute=_table(computed, COMPUTE_SCHEMA),
        rewrite=_table(superseded.sort_values([DATA_FILE, "track_id"]), REWRITE_SCHEMA),
        removed_files=removed_files,
        counts=counts,
        duplicates=duplicates,
    )


def _as_stored(index: pa.Table, name: str, value):
    """The setting as the table stores it (float32 window lengths compare as float32)."""
    return pa.array([value], index.schema.field(name).type).to_pandas().iloc[0]


def _table(frame: pd.DataFrame, arrow_schema: pa.Schema) -> pa.Table:
    frame = frame.reset_index(drop=True)
    columns = {}
    for field in arrow_schema:
        values = frame[field.name].astype(object).where(frame[field.name].notna(), None)
        columns[field.name] = pa.array(values.tolist(), field.type)
    return pa.table(columns, schema=arrow_schema)


__all__ = ["Plan", "list_catalog", "plan_run"]
