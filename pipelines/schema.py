"""The Parquet schemas of the embed job, defined once for the writer and every reader.

Version 1. One row per track in `embeddings-*.parquet`; with --per-window, one row per
window in `windows-*.parquet`. `model_id` and `feature_config_sha256` trace each
embedding to the weights and front end that made it.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "musicrep-embeddings-1"
EMBEDDINGS_PREFIX = "embeddings"
WINDOWS_PREFIX = "windows"
# Row groups of about this many rows: large enough for fast scans in DuckDB/BigQuery,
# small enough that pandas can read one group at a time.
ROWS_PER_ROW_GROUP = 10_000


def embedding_schema(embedding_size: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("uri", pa.string()),
            pa.field("content_sha256", pa.string()),
            pa.field("duration_s", pa.float64()),
            pa.field("n_windows", pa.int32()),
            pa.field("window_s", pa.float32()),
            pa.field("hop_s", pa.float32()),
            pa.field("embedding", pa.list_(pa.float32(), embedding_size)),
            pa.field("model_id", pa.string()),
            pa.field("feature_config_sha256", pa.string()),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
        ],
        metadata={"musicrep_schema": SCHEMA_VERSION},
    )


def window_schema(embedding_size: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("start_s", pa.float32()),
            pa.field("embedding", pa.list_(pa.float32(), embedding_size)),
        ],
        metadata={"musicrep_schema": SCHEMA_VERSION},
    )


def row_group_bytes(embedding_size: int) -> int:
    """Beam's WriteToParquet cuts row groups by buffered bytes; this many ≈ ROWS_PER_ROW_GROUP rows."""
    return ROWS_PER_ROW_GROUP * (4 * embedding_size + 256)
