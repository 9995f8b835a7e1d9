"""The Parquet schemas of the embed job and the store's Delta table, defined once for the
writers and every reader.

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
SCHEMA_METADATA_KEY = b"musicrep_schema"  # the Arrow schema metadata key holding the version
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
        metadata={SCHEMA_METADATA_KEY: SCHEMA_VERSION},
    )


def window_schema(embedding_size: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("track_id", pa.string(), nullable=False),
            pa.field("start_s", pa.float32()),
            pa.field("embedding", pa.list_(pa.float32(), embedding_size)),
        ],
        metadata={SCHEMA_METADATA_KEY: SCHEMA_VERSION},
    )


def row_bytes(embedding_size: int) -> int:
    """About the bytes of one row: the float32 embedding and ~256 bytes of other columns."""
    return 4 * embedding_size + 256


def row_group_bytes(embedding_size: int) -> int:
    """Beam's WriteToParquet cuts row groups by buffered bytes; this many ≈ ROWS_PER_ROW_GROUP rows."""
    return ROWS_PER_ROW_GROUP * row_bytes(embedding_size)


# The store (a Delta table, musicrep.store) holds embedding rows plus the source-object
# columns: what the catalog listing reports. Change detection compares size and the GCS
# generation (every overwrite gets a new one), or the mtime where there is no generation
# (local disks).
STORE_SCHEMA_VERSION = "musicrep-store-1"
SOURCE_FIELDS = (
    pa.field("source_size_bytes", pa.int64()),
    pa.field("source_mtime_s", pa.float64()),
    pa.field("source_generation", pa.int64()),
    pa.field("source_crc32c", pa.string()),
    pa.field("source_md5", pa.string()),
)
SOURCE_COLUMNS = tuple(field.name for field in SOURCE_FIELDS)
# Columns that say how an embedding was made: any difference from the run's settings
# makes the row stale.
CONFIG_COLUMNS = (
    "model_id",
    "feature_config_sha256",
    "window_spec",
    "precision",
    "engine",
)


def store_schema(embedding_size: int) -> pa.Schema:
    """The store's rows: the embedding schema plus the source-object columns."""
    return pa.schema(
        list(embedding_schema(embedding_size)) + list(SOURCE_FIELDS),
        metadata={SCHEMA_METADATA_KEY: STORE_SCHEMA_VERSION},
    )


def config_columns(arrow_schema: pa.Schema) -> tuple[str, ...]:
    return tuple(name for name in CONFIG_COLUMNS if name in arrow_schema.names)


def index_columns(arrow_schema: pa.Schema) -> list[str]:
    """What change detection reads of every row: never the embedding."""
    return ["track_id", "uri", "content_sha256", *SOURCE_COLUMNS, *config_columns(arrow_schema)]


# Column names readers outside the embed job use (probes accept any Parquet with the first
# two; the provenance columns are used when present).
TRACK_ID = "track_id"
EMBEDDING = "embedding"
PROVENANCE_COLUMNS = ("model_id", "feature_config_sha256")


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
