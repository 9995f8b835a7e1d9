"""What one reembed run writes into the store and how it becomes one commit.

A run writes, under STORE/data/RUN_ID/, `part-NNNNN-of-MMMMM.parquet` files of new rows
(one per hash bucket of track ids) and `rewrite-<hash>.parquet` copies of existing data
files without the rows the run supersedes (Delta deletes are copy-on-write), and its dead
letters into STORE/_errors/RUN_ID/errors.jsonl. File names are fixed by their content's
key, so a retried bundle writes the same file again. `collect` turns what a successful
run wrote into the add/remove actions of its one commit (musicrep.store.table.commit).
The Beam job that calls these is musicrep.pipelines.reembed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import zlib

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrep import fileio
from musicrep.contracts import schema
from musicrep.contracts.layout import ERRORS_PREFIX
from musicrep.store import changes, table

ERRORS_DIR = "_errors"
PART_PREFIX = "part"
REWRITE_PREFIX = "rewrite"


def run_dir(store: str, run_id: str) -> str:
    return fileio.join(store, table.DATA_DIR, run_id)


def errors_path(store: str, run_id: str) -> str:
    return fileio.join(store, ERRORS_DIR, run_id, f"{ERRORS_PREFIX}.jsonl")


def part_number(track_id: str, num_files: int) -> int:
    """The data file a new row goes to: a hash of its track id, so each file holds about
    table.ROWS_PER_FILE rows whatever the runner's bundles."""
    return zlib.crc32(track_id.encode()) % num_files


def rewrite_name(data_file: str) -> str:
    return f"{REWRITE_PREFIX}-{hashlib.sha1(data_file.encode()).hexdigest()[:20]}.parquet"


def parquet_bytes(rows: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(rows, buffer)
    return buffer.getvalue()


def with_source_columns(row: dict, listed: dict) -> dict:
    """An embedding row with the listing's source-object columns."""
    return {**row, **{name: listed[name] for name in schema.SOURCE_COLUMNS}}


def write_part(*, directory: str, number: int, num_files: int, rows: list[dict], arrow_schema: pa.Schema) -> str:
    """DIRECTORY/part-NNNNN-of-MMMMM.parquet holding `rows` sorted by track id."""
    rows = sorted(rows, key=lambda row: row["track_id"])
    target = fileio.join(directory, f"{PART_PREFIX}-{number:05d}-of-{num_files:05d}.parquet")
    fileio.write_bytes(target, parquet_bytes(pa.Table.from_pylist(rows, schema=arrow_schema)))
    return target


def rewrite_data_file(
    *, store: str, directory: str, data_file: str, entries: list[dict], unchanged: set[str] | dict, arrow_schema: pa.Schema
) -> str | None:
    """A copy of `data_file` without the rows that go, as DIRECTORY/rewrite-<hash>.parquet;
    None when every row stays as it is (nothing written).

    `entries`: the plan's rows of that file (changes.REWRITE_SCHEMA). A row goes unless it
    may be kept (`keep_if_unchanged`) and its bytes hashed as before (`unchanged`); a row
    that stays gets the listing's source columns."""
    entries = {entry["track_id"]: entry for entry in entries}
    drop = {
        track_id
        for track_id, entry in entries.items()
        if not entry["keep_if_unchanged"] or track_id not in unchanged
    }
    with fileio.open_read(table.data_uri(store, data_file)) as handle:
        original = pq.read_table(handle)
    sources = {row["track_id"]: row for row in original.select(["track_id", *schema.SOURCE_COLUMNS]).to_pylist()}
    refresh = {
        track_id: entry
        for track_id, entry in entries.items()
        if track_id not in drop and any(sources.get(track_id, {}).get(n) != entry[n] for n in schema.SOURCE_COLUMNS)
    }
    if not drop and not refresh:
        return None
    kept = original.filter(pc.invert(pc.is_in(original["track_id"], pa.array(sorted(drop), pa.string()))))
    kept = _refresh_sources(kept, refresh).select(arrow_schema.names).cast(arrow_schema)
    target = fileio.join(directory, rewrite_name(data_file))
    fileio.write_bytes(target, parquet_bytes(kept))
    return target


def _refresh_sources(rows: pa.Table, refresh: dict[str, dict]) -> pa.Table:
    if not refresh:
        return rows
    track_ids = rows["track_id"].to_pylist()
    for name in schema.SOURCE_COLUMNS:
        old = rows[name].to_pylist()
        new = [refresh[t][name] if t in refresh else value for t, value in zip(track_ids, old)]
        field = rows.schema.field(name)
        rows = rows.set_column(rows.schema.get_field_index(name), field, pa.array(new, field.type))
    return rows


@dataclasses.dataclass(frozen=True)
class RunFiles:
    """A finished run's commit: files to add and remove, the counts, and the empty files
    the run wrote (deleted, not committed)."""

    adds: list[table.DataFile]
    removes: list[str]
    counts: dict[str, int]
    empty: list[str]


def collect(
    store: str, run_id: str, plan: changes.Plan, index: pa.Table, *, content_unchanged: int, failed: int
) -> RunFiles:
    """What the successful run wrote under STORE/data/RUN_ID/ → its commit. `content_unchanged`
    and `failed`: tracks whose bytes hashed as before, and dead letters, as the run counted them."""
    directory = run_dir(store, run_id)
    relative = f"{table.DATA_DIR}/{run_id}"

    def described(prefix: str) -> list[table.DataFile]:
        found = fileio.glob(fileio.join(directory, f"{prefix}-*.parquet"))
        return [table.describe_file(store, f"{relative}/{fileio.basename(path)}") for path in found]

    parts, rewritten = described(PART_PREFIX), described(REWRITE_PREFIX)
    originals = {rewrite_name(path): path for path in set(plan.rewrite.column(table.DATA_FILE).to_pylist())}
    removes = sorted([originals[fileio.basename(file.path)] for file in rewritten] + plan.removed_files)
    counted = index.group_by(table.DATA_FILE).aggregate([("track_id", "count")])
    rows_per_file = dict(zip(counted[table.DATA_FILE].to_pylist(), counted["track_id_count"].to_pylist()))
    rows_rewritten = sum(file.num_rows for file in rewritten)
    adds = [file for file in parts + rewritten if file.num_rows > 0]
    counts = {
        "tracks_embedded": sum(file.num_rows for file in parts),
        "tracks_content_unchanged": content_unchanged,
        "tracks_failed": failed,
        "rows_removed": sum(rows_per_file.get(path, 0) for path in removes) - rows_rewritten,
        "rows_rewritten": rows_rewritten,
        "files_added": len(adds),
        "files_removed": len(removes),
    }
    empty = [fileio.join(store, file.path) for file in parts + rewritten if file.num_rows == 0]
    return RunFiles(adds=adds, removes=removes, counts=counts, empty=empty)
