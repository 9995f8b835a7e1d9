"""Label tables, read one way for every consumer (supervised pre-training, probes, tests).

A labels file is CSV (`.csv`, `.csv.gz`) or Parquet (`.parquet`, `.pq`), local or gs://,
one row per track. Ids and the columns that hold names (`track_id`, `split`, `key`,
`tags`) stay strings even where they look like numbers; other CSV columns are typed by
their values (numbers for regression targets, names for classes). `tags` holds either one
string of `|`-separated tags or a list of strings.
"""
from __future__ import annotations

import gzip
import io
import math

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from musicrep import fileio
from musicrep.errors import ConfigError

TAG_SEPARATOR = "|"
STRING_COLUMNS = ("track_id", "split", "key", "tags")
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".csv.gz")


def split_tags(value: object) -> list[str]:
    """The tags of one `tags` cell: a `|`-separated string or a list; empty for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [tag.strip() for tag in value.split(TAG_SEPARATOR) if tag.strip()]
    return [str(tag).strip() for tag in value if str(tag).strip()]


def read_labels(path: str, *, required: tuple[str, ...] = ("track_id",)) -> pa.Table:
    """The labels table at `path` (one file; a glob must match exactly one).

    Raises:
        ConfigError: no or several files, an unknown extension, or a `required` column
            missing (the message lists the columns found).
    """
    paths = fileio.glob(path)
    if len(paths) != 1:
        raise ConfigError(f"labels {path!r} must name one file; it matches {len(paths)}")
    name = paths[0].lower()
    data = fileio.read_bytes(paths[0])  # labels are small; pyarrow wants a seekable file
    if name.endswith(_PARQUET):
        table = pq.read_table(pa.BufferReader(data))
    elif name.endswith(_CSV):
        strings = {column: pa.string() for column in STRING_COLUMNS}
        if name.endswith(".gz"):
            data = gzip.decompress(data)
        table = pa_csv.read_csv(io.BytesIO(data), convert_options=pa_csv.ConvertOptions(column_types=strings))
    else:
        raise ConfigError(f"labels must be a {'/'.join(_CSV + _PARQUET)} file, got {path!r}")
    absent = [column for column in required if column not in table.column_names]
    if absent:
        raise ConfigError(f"labels {path!r} lack column(s) {absent}; columns: {table.column_names}")
    return table
