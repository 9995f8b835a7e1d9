"""The store's Delta Lake table: schema, opening, reading its index, and the one commit.

The table and its transaction log live wholly under STORE (local disk or gs://; no
catalog service). Data files are Parquet written by Beam workers (or by a compaction);
a run becomes visible only through `commit`, one Delta transaction that adds the run's
files and removes the files it superseded. What is not in the log does not exist for
readers, so files left by a killed run are invisible until `vacuum` removes them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from musicrep import fileio
from musicrep.errors import ConfigError, MusicrepError
from musicrep.contracts import schema
from musicrep.contracts.schema import index_columns, store_schema

logger = logging.getLogger(__name__)

# Every commit of a reembed run carries a Delta "txn" action with this app id: Delta's
# conflict check then refuses a second run that read the same table version, where two
# blind appends would otherwise both land and duplicate tracks.
APP_ID = "musicrep-reembed"
RUN_KEY = "musicrep_run"  # commit-info key holding the run record
COMMIT_TOKEN_KEY = "musicrep_commit"
DATA_DIR = "data"
# Rows per data file. A delete rewrites every file holding a removed row (delta-rs is
# copy-on-write), so a removal costs about this many rows; 1,000 rows of 1728 float32
# are ~7 MB: 300 scattered removals rewrite ≤ 0.3 M rows (~2 GB) whatever the table size,
# and a 10^8-row table is 10^5 files, which Delta's checkpoints list in one Parquet file.
ROWS_PER_FILE = 1_000
DATA_FILE = "data_file"  # index column: the data file (relative to STORE) holding the row
# Tries of the one commit and of the table's creation on a storage error: object_store
# retries 429/503 itself but never a put whose connection was reset (the write may have
# landed). A landed commit is found by its token before trying again; creation is
# mode="ignore", so a landed one is opened.
COMMIT_ATTEMPTS = 4
COMMIT_RETRY_WAIT_S = 1.0


class ConcurrentRunError(MusicrepError):
    """Another commit reached the table after this run read it; nothing was committed."""


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A Parquet file under STORE to add to the table."""

    path: str  # relative to STORE
    size_bytes: int
    num_rows: int
    modified_ms: int


def table_uri(store: str) -> str:
    return store.rstrip("/")


def open_table(store: str, options: dict[str, str] | None = None, version: int | None = None):
    """The DeltaTable at STORE (latest or `version`), or None when there is none yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(table_uri(store), version=version, storage_options=options or None)
    except TableNotFoundError:
        return None


def open_or_create(store: str, embedding_size: int, options: dict[str, str] | None = None):
    """The table at STORE, created empty (version 0) with the store schema when missing."""
    table = open_table(store, options)
    if table is None:
        if fileio.exists(fileio.join(store, "runs.jsonl")) or fileio.glob(fileio.join(store, "current", "*.parquet")):
            raise ConfigError(
                f"{store} holds a store of the previous format (current/ + runs.jsonl): "
                f"import it once with `musicrep store import {store}`"
            )
        table = create_table(store, embedding_size, options)
    size = embedding_size_of(table)
    if size not in (None, embedding_size):
        raise ConfigError(f"the store at {store} holds {size}-d embeddings, the model makes {embedding_size}-d ones")
    return table


def create_table(store: str, embedding_size: int, options: dict[str, str] | None = None):
    """An empty table (version 0) with the store schema; an existing one is opened instead."""
    from deltalake import DeltaTable

    fileio.mkdirs(store)
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return DeltaTable.create(
                table_uri(store),
                schema=store_schema(embedding_size),
                mode="ignore",  # a concurrent first run created it (or our lost try did): use it
                name="musicrep_embeddings",
                description=f"one embedding per catalog track ({schema.STORE_SCHEMA_VERSION})",
                storage_options=options or None,
            )
        except OSError:
            if attempt == COMMIT_ATTEMPTS:
                raise
            time.sleep(COMMIT_RETRY_WAIT_S * attempt)


def arrow_schema_of(table) -> pa.Schema:
    """The table's schema as pyarrow (Delta has no fixed-size list: the embedding is a list)."""
    return pa.schema(table.schema().to_arrow())


def embedding_size_of(table) -> int | None:
    """The embedding width: the fixed size written in any data file's Arrow schema."""
    files = data_files(table)
    if not files:
        return None
    with _open(table, files[0]) as handle:
        field = pq.read_schema(handle).field("embedding")
    return field.type.list_size if pa.types.is_fixed_size_list(field.type) else None


def data_files(table) -> list[str]:
    """Paths (relative to STORE) of the table's current data files, sorted."""
    actions = pa.table(table.get_add_actions(flatten=True))
    return sorted(actions.column("path").to_pylist())


def data_uri(store: str, path: str) -> str:
    """A data file's URI from its add-action path (relative to STORE, or absolute)."""
    return path if "://" in path or path.startswith("/") else fileio.join(store, path)


def _root(table) -> str:
    uri = table.table_uri.rstrip("/")
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _open(table, path: str):
    return fileio.open_read(data_uri(_root(table), path))


def read_index(table, *, threads: int = 8) -> pa.Table:
    """Every row's index columns (no embedding) plus `data_file`: what change detection needs.

    Reads only those columns of each data file (Parquet is columnar), `threads` files at a time."""
    arrow_schema = arrow_schema_of(table)
    columns = index_columns(arrow_schema)
    files = data_files(table)
    empty = pa.schema([arrow_schema.field(name) for name in columns] + [pa.field(DATA_FILE, pa.string())])

    def read(path: str) -> pa.Table:
        with _open(table, path) as handle:
            part = pq.read_table(handle, columns=[c for c in columns if c in pq.read_schema(handle).names])
        for name in columns:  # files written before a column existed
            if name not in part.column_names:
                part = part.append_column(arrow_schema.field(name), pa.nulls(part.num_rows, arrow_schema.field(name).type))
        part = part.select(columns).cast(pa.schema([arrow_schema.field(c) for c in columns]))
        return part.append_column(DATA_FILE, pa.array([path] * part.num_rows, pa.string()))

    if not files:
        return empty.empty_table()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(read, files))
    return pa.concat_tables(parts).cast(empty)


def describe_file(store: str, path: str) -> DataFile:
    """A written data file's add-action facts, from its listing and Parquet footer."""
    uri = fileio.join(store, path)
    (info,) = fileio.list_files(uri)
    with fileio.open_read(uri) as handle:
        rows = pq.ParquetFile(handle).metadata.num_rows
    return DataFile(path=path, size_bytes=info.size_bytes, num_rows=rows, modified_ms=int(info.mtime_s * 1000))


def commit(
    table, *, adds: list[DataFile], removes: list[str], run: dict[str, Any], options: dict[str, str] | None = None
) -> tuple[int, float]:
    """One Delta transaction: add `adds`, remove `removes` (paths), the run in the commit
    info. Returns (new version, seconds). `options`: the storage options the table was
    opened with (to read the log again after a storage error). The table object must be the snapshot the run
    planned from: a commit by anyone else since then that touches the same files, or any
    other reembed commit, fails this one (ConcurrentRunError) and nothing is committed."""
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, CommitProperties, RemoveAction, Transaction

    now_ms = int(time.time() * 1000)
    actions = [
        AddAction(file.path, file.size_bytes, {}, file.modified_ms, True, json.dumps({"numRecords": file.num_rows}))
        for file in adds
    ]
    actions += [RemoveAction(path, True, now_ms) for path in removes]
    read_version = table.version()
    token = uuid.uuid4().hex  # finds our commit's version afterwards (retries may move it)
    properties = CommitProperties(
        custom_metadata={RUN_KEY: run, COMMIT_TOKEN_KEY: token},
        app_transactions=[Transaction(APP_ID, read_version + 1)],
        max_commit_retries=3,
    )
    started = time.perf_counter()
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            table.create_write_transaction(actions, "append", arrow_schema_of(table), commit_properties=properties)
            break
        except CommitFailedError as error:
            if _version_with_token(table, token, options) is not None:
                break  # our own write landed before its answer was lost, and a retry met it
            raise ConcurrentRunError(
                f"another commit reached the store after this run read version {read_version} "
                f"({' '.join(str(error).split())}); "
                "nothing of this run was committed and the table is as the other commit left it: run reembed again"
            ) from error
        except OSError as error:  # delta-rs's object-store errors
            if _version_with_token(table, token, options) is not None:
                break  # the write landed, its answer was lost
            if attempt == COMMIT_ATTEMPTS:
                raise
            logger.warning("commit: storage error on try %d of %d, trying again: %s", attempt, COMMIT_ATTEMPTS, " ".join(str(error).split())[:300])
            time.sleep(COMMIT_RETRY_WAIT_S * attempt)
    seconds = time.perf_counter() - started
    version = _version_with_token(table, token, options)
    table.update_incremental()
    return version, seconds


def _version_with_token(table, token: str, options: dict[str, str] | None) -> int | None:
    """The version of the commit carrying `token`, read from the log as it is now (a fresh
    table: `table` must stay at the version the run planned from), or None."""
    from deltalake import DeltaTable

    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            latest = DeltaTable(table.table_uri, storage_options=options or None)
            return next((entry["version"] for entry in latest.history(10) if entry.get(COMMIT_TOKEN_KEY) == token), None)
        except OSError:
            if attempt == COMMIT_ATTEMPTS:
                raise
            time.sleep(COMMIT_RETRY_WAIT_S * attempt)
    return None


def runs(table, limit: int | None = None) -> list[dict[str, Any]]:
    """The table's commits, newest first: version, timestamp, operation and our run record."""
    entries = []
    for entry in table.history(limit):
        entries.append(
            {
                "version": entry.get("version"),
                "timestamp_ms": entry.get("timestamp"),
                "operation": entry.get("operation"),
                "run": entry.get(RUN_KEY),
            }
        )
    return entries
