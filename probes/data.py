"""Read a probe's inputs: track embeddings (Parquet from the embed job) and labels.

Both are read through Beam's `FileSystems`, so local paths and gs:// work alike. The two
sides are joined on `track_id`; a track on one side only is an error unless the caller
allows it, and then it is counted, never dropped silently.
"""
from __future__ import annotations

import dataclasses
import io
import logging

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from musicrep.errors import ConfigError, MusicrepError
from musicrep.probes.keys import N_KEYS, key_name, parse_key

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid",
                  "test": "test"}
# Columns of the embed job's Parquet schema that the probes need.
EMBEDDING_COLUMNS = ("track_id", "embedding", "model_id", "feature_config_sha256")
DEFAULT_LABEL_COLUMNS = {"multilabel": ("tags",), "multiclass": ("label",), "key": ("key",),
                         "regression": ("valence", "arousal")}
TAG_SEPARATOR = "|"
_EXAMPLES = 5  # how many ids an error or report quotes


class MissingTracksError(MusicrepError):
    """Tracks present in the labels or in the embeddings but not in both."""


def _examples(ids) -> str:
    ids = sorted(ids)
    more = f", … ({len(ids) - _EXAMPLES} more)" if len(ids) > _EXAMPLES else ""
    return ", ".join(repr(i) for i in ids[:_EXAMPLES]) + more


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def match_files(pattern: str) -> list[str]:
    """Paths matching a glob (local or gs://), sorted; ConfigError when there is none."""
    try:
        metadata = FileSystems.match([pattern])[0].metadata_list
    except Exception as error:  # Beam raises BeamIOError or OSError depending on the scheme
        raise ConfigError(f"cannot list {pattern!r}: {error}") from error
    paths = sorted(item.path for item in metadata)
    if not paths:
        raise ConfigError(f"no file matches {pattern!r}")
    return paths


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """One embedding per track.

    Attributes:
        track_ids: (n,) str.
        vectors: (n, d) float32.
        model_id: the model that produced every vector.
        feature_config_sha256: the front end it used.
        files: how many Parquet files were read.
    """

    track_ids: np.ndarray
    vectors: np.ndarray
    model_id: str
    feature_config_sha256: str
    files: int


def _vectors(column: pa.ChunkedArray) -> np.ndarray:
    if not pa.types.is_fixed_size_list(column.type) or column.type.value_type != pa.float32():
        raise ConfigError(f"column 'embedding' must be fixed_size_list<float32>; got {column.type}")
    width = column.type.list_size
    if column.null_count:
        raise ConfigError(f"column 'embedding' has {column.null_count} null rows")
    # flatten() honours slice offsets, unlike .values.
    flat = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    values = np.concatenate(flat) if flat else np.zeros(0, np.float32)
    return values.reshape(-1, width).astype(np.float32, copy=False)


def _single_value(table: pa.Table, column: str, pattern: str) -> str:
    values = set(table.column(column).unique().to_pylist())
    if len(values) != 1:
        raise ConfigError(f"{pattern!r} mixes {len(values)} values of {column!r} "
                          f"({_examples(map(str, values))}); probe one embedding model at a time")
    return str(values.pop())


def read_embeddings(pattern: str) -> Embeddings:
    """Read every Parquet file matching `pattern` (the embed job's output)."""
    paths = match_files(pattern)
    tables = []
    for path in paths:
        parquet = pq.ParquetFile(pa.BufferReader(read_bytes(path)))
        absent = [name for name in EMBEDDING_COLUMNS if name not in parquet.schema_arrow.names]
        if absent:
            raise ConfigError(f"{path} lacks column(s) {absent}; is it the embed job's output?")
        tables.append(parquet.read(columns=list(EMBEDDING_COLUMNS)))
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as error:
        raise ConfigError(f"the files of {pattern!r} disagree in schema: {error}") from error
    track_ids = np.asarray(table.column("track_id").to_pylist(), dtype=object)
    _refuse_duplicates(track_ids, f"embeddings {pattern!r}")
    embeddings = Embeddings(
        track_ids=track_ids, vectors=_vectors(table.column("embedding")),
        model_id=_single_value(table, "model_id", pattern),
        feature_config_sha256=_single_value(table, "feature_config_sha256", pattern),
        files=len(paths))
    logger.info("read %d embeddings (d=%d) from %d file(s)", len(track_ids),
                embeddings.vectors.shape[1], len(paths))
    return embeddings


def _refuse_duplicates(track_ids: np.ndarray, where: str) -> None:
    unique, counts = np.unique(track_ids, return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1]
        raise ConfigError(f"{where}: {len(repeated)} track_id(s) appear more than once: "
                          f"{_examples(repeated)}")


def read_labels(path: str) -> pa.Table:
    """A labels table (CSV or Parquet) with at least `track_id` and `split`."""
    paths = match_files(path)
    if len(paths) != 1:
        raise ConfigError(f"labels {path!r} must name one file; it matches {len(paths)}")
    data = read_bytes(paths[0])
    if path.endswith(".parquet"):
        table = pq.read_table(pa.BufferReader(data))
    else:
        # Ids and keys stay strings even when they look like numbers.
        strings = {name: pa.string() for name in ("track_id", "split", "key", "tags")}
        table = pa_csv.read_csv(io.BytesIO(data),
                                convert_options=pa_csv.ConvertOptions(column_types=strings))
    absent = [name for name in ("track_id", "split") if name not in table.column_names]
    if absent:
        raise ConfigError(f"labels {path!r} lack column(s) {absent}; columns: {table.column_names}")
    return table


@dataclasses.dataclass(frozen=True)
class MissingTracks:
    """Tracks on one side of the join only (kept out of the probe)."""

    without_embedding: tuple[str, ...]
    without_label: tuple[str, ...]

    def as_dict(self) -> dict:
        return {"labelled_without_embedding": {"count": len(self.without_embedding),
                                               "examples": list(self.without_embedding[:_EXAMPLES])},
                "embedded_without_label": {"count": len(self.without_label),
                                           "examples": list(self.without_label[:_EXAMPLES])}}


@dataclasses.dataclass(frozen=True)
class ProbeData:
    """The joined, split inputs of one probe.

    Attributes:
        task: one of `presets.TASKS`.
        x: split -> (n, d) float32 embeddings.
        y: split -> targets: multilabel (n, labels) float32 0/1; multiclass and key (n,)
            int64 class indices; regression (n, columns) float32 raw values.
        track_ids: split -> (n,) track ids in the order of x and y.
        target_names: tag vocabulary, class names, key names or regression columns.
        label_columns: the label columns read.
        embeddings: where the vectors came from (model id, front end, file count).
        missing: tracks left out because one side lacked them.
    """

    task: str
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    track_ids: dict[str, np.ndarray]
    target_names: tuple[str, ...]
    label_columns: tuple[str, ...]
    model_id: str
    feature_config_sha256: str
    missing: MissingTracks

    @property
    def embedding_dim(self) -> int:
        return int(self.x["train"].shape[1])


def _splits(table: pa.Table) -> np.ndarray:
    raw = table.column("split").to_pylist()
    unknown = sorted({str(value) for value in raw if str(value).lower() not in _SPLIT_ALIASES})
    if unknown:
        raise ConfigError(f"unknown split value(s) {unknown}; expected train, valid, test")
    return np.asarray([_SPLIT_ALIASES[str(value).lower()] for value in raw], dtype=object)


def _column(table: pa.Table, name: str) -> list:
    if name not in table.column_names:
        raise ConfigError(f"labels lack column {name!r}; columns: {table.column_names}")
    return table.column(name).to_pylist()


def _refuse_nulls(values: list, track_ids: np.ndarray, name: str) -> None:
    empty = [track_ids[i] for i, value in enumerate(values)
             if value is None or (isinstance(value, float) and np.isnan(value))]
    if empty:
        raise ConfigError(f"column {name!r} is empty for {len(empty)} track(s): {_examples(empty)}")


def _tag_lists(values: list) -> list[list[str]]:
    tags = []
    for value in values:
        if value is None:
            tags.append([])
        elif isinstance(value, str):
            tags.append([tag.strip() for tag in value.split(TAG_SEPARATOR) if tag.strip()])
        else:
            tags.append([str(tag) for tag in value])
    return tags


def build_targets(table: pa.Table, *, task: str, columns: tuple[str, ...],
                  track_ids: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Targets of `task` for every row of `table`, and the names of their labels/classes."""
    if task in ("multiclass", "key") and len(columns) != 1:
        raise ConfigError(f"task {task!r} takes one label column; got {list(columns)}")
    if task == "multilabel":
        if len(columns) != 1:
            raise ConfigError(f"task 'multilabel' takes one tags column; got {list(columns)}")
        tags = _tag_lists(_column(table, columns[0]))
        vocabulary = tuple(sorted({tag for row in tags for tag in row}))
        if not vocabulary:
            raise ConfigError(f"column {columns[0]!r} holds no tag at all")
        position = {tag: j for j, tag in enumerate(vocabulary)}
        y = np.zeros((len(tags), len(vocabulary)), np.float32)
        for i, row in enumerate(tags):
            y[i, [position[tag] for tag in row]] = 1.0
        return y, vocabulary
    if task == "regression":
        values = []
        for name in columns:
            column = _column(table, name)
            _refuse_nulls(column, track_ids, name)
            try:
                values.append(np.asarray(column, dtype=np.float32))
            except (TypeError, ValueError):
                raise ConfigError(f"regression column {name!r} is not numeric") from None
        return np.stack(values, axis=1), tuple(columns)
    values = _column(table, columns[0])
    _refuse_nulls(values, track_ids, columns[0])
    if task == "key":
        return (np.asarray([parse_key(value) for value in values], np.int64),
                tuple(key_name(index) for index in range(N_KEYS)))
    if task != "multiclass":
        raise ConfigError(f"unknown probe task {task!r}")
    classes = sorted(set(values))  # numeric classes sort as numbers, names alphabetically
    position = {value: j for j, value in enumerate(classes)}
    return np.asarray([position[value] for value in values], np.int64), tuple(map(str, classes))


def join_tracks(embeddings: Embeddings, labels: pa.Table, *, task: str,
                label_columns: tuple[str, ...], allow_missing: bool = False) -> ProbeData:
    """Join labels and embeddings on track_id and split them into train/valid/test.

    Raises:
        MissingTracksError: a track is on one side only and `allow_missing` is false.
    """
    label_ids = np.asarray([str(value) for value in _column(labels, "track_id")], dtype=object)
    _refuse_duplicates(label_ids, "labels")
    embedded_ids = np.asarray([str(value) for value in embeddings.track_ids], dtype=object)
    without_embedding = tuple(sorted(set(label_ids) - set(embedded_ids)))
    without_label = tuple(sorted(set(embedded_ids) - set(label_ids)))
    missing = MissingTracks(without_embedding, without_label)
    if (without_embedding or without_label) and not allow_missing:
        parts = []
        if without_embedding:
            parts.append(f"{len(without_embedding)} labelled track(s) have no embedding "
                         f"({_examples(without_embedding)})")
        if without_label:
            parts.append(f"{len(without_label)} embedded track(s) have no label "
                         f"({_examples(without_label)})")
        raise MissingTracksError("; ".join(parts) + "; pass --allow-missing to probe the "
                                 "tracks present on both sides and count the others")
    if without_embedding or without_label:
        logger.warning("left out %d labelled track(s) without embedding and %d embedded "
                       "track(s) without label", len(without_embedding), len(without_label))
    embedded = set(embedded_ids)
    keep = np.asarray([track_id in embedded for track_id in label_ids], dtype=bool)
    labels = labels.filter(pa.array(keep))
    label_ids = label_ids[keep]
    targets, names = build_targets(labels, task=task, columns=label_columns, track_ids=label_ids)
    row_of = {track_id: row for row, track_id in enumerate(embedded_ids)}
    vectors = embeddings.vectors[[row_of[track_id] for track_id in label_ids]]
    splits = _splits(labels)
    data = {split: splits == split for split in SPLITS}
    empty = [split for split, mask in data.items() if not mask.any()]
    if empty:
        raise ConfigError(f"no labelled track with an embedding in split(s) {empty}")
    return ProbeData(
        task=task,
        x={split: vectors[mask] for split, mask in data.items()},
        y={split: targets[mask] for split, mask in data.items()},
        track_ids={split: label_ids[mask] for split, mask in data.items()},
        target_names=names, label_columns=tuple(label_columns),
        model_id=embeddings.model_id, feature_config_sha256=embeddings.feature_config_sha256,
        missing=missing)
