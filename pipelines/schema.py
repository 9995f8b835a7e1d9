"""The Parquet schemas of the embed job, defined once for the writer and every reader.

Version 2. One row per track in `embeddings-*.parquet`; with --per-window, one row per
window in `windows-*.parquet`. `model_id` and `feature_config_sha256` trace each
embedding to the weights and front end that made it; `engine` and `precision` to how the
model ran (bf16 rows differ from fp32 rows by ~1e-3), `aggregate`, `max_windows` and
`window_spec` (the run's window settings on the frame grid, as JSON) to how windows became
the track's row; `window_s` and `hop_s` are what the track got (a track shorter than one
window gets one window of its whole length). Version 2 added the five columns after
`feature_config_sha256`.
"""
from __future__ import annotations

import pyarrow as pa

from musicrep.errors import ConfigError

SCHEMA_VERSION = "musicrep-embeddings-2"
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
            pa.field("engine", pa.string()),
            pa.field("precision", pa.string()),
            pa.field("aggregate", pa.string()),
            pa.field("max_windows", pa.int32()),  # null: every window
            pa.field("window_spec", pa.string()),  # the run's WindowSpec.key(): same key, same pooling
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


# Column names readers outside the embed job use (probes accept any Parquet with the first
# two; the provenance columns are used when present).
TRACK_ID = "track_id"
EMBEDDING = "embedding"
PROVENANCE_COLUMNS = ("model_id", "feature_config_sha256")
SCHEMA_METADATA_KEY = b"musicrep_schema"


def check_schema_version(schema_metadata: dict[bytes, bytes] | None, *, where: str) -> None:
    """Refuses a Parquet file written by musicrep with another schema version.

    A file without our metadata key is a foreign Parquet (another tool's embeddings) and
    passes: readers then go by column names only.
    """
    found = (schema_metadata or {}).get(SCHEMA_METADATA_KEY)
    if found is not None and found.decode() != SCHEMA_VERSION:
        raise ConfigError(
            f"{where}: Parquet schema version {found.decode()!r}, but this musicrep reads "
            f"{SCHEMA_VERSION!r}; re-embed with this version"
        )
