"""Read a probe's inputs: track embeddings (Parquet) and labels.

Embeddings come from any Parquet with a `track_id` column and an `embedding` column of
lists of numbers (a fixed-size list as the embed job writes, or a plain list as pandas
writes): embeddings of other models are probed the same way. The embed job's provenance
columns (`model_id`, `feature_config_sha256`) are used when present and reported as
"unknown" otherwise; a file that says it is musicrep's must have the schema version this
code reads. Both sides are read through `musicrep.fileio` (local paths and gs://). The
two sides are joined on `track_id`; a track on one side only is an error unless the
caller allows it, and then it is counted, never dropped silently.
"""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrep import fileio
from musicrep.errors import ConfigError, MusicrepError
from musicrep.labels import read_labels as read_label_table
from musicrep.labels import split_tags
from musicrep.manifest import resolve_files
from musicrep.pipelines import schema
from musicrep.probes.keys import N_KEYS, key_name, parse_key

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid",
                  "test": "test"}
DEFAULT_LABEL_COLUMNS = {"multilabel": ("tags",), "multiclass": ("label",), "key": ("key",),
                         "regression": ("valence", "arousal")}
UNKNOWN = "unknown"  # what the report says of provenance a foreign Parquet does not carry
_EXAMPLES = 5  # how many ids an error or report quotes


class MissingTracksError(MusicrepError):
    """Tracks present in the labels or in the embeddings but not in both."""


def _examples(ids) -> str:
    ids = sorted(ids)
    more = f", … ({len(ids) - _EXAMPLES} more)" if len(ids) > _EXAMPLES else ""
    return ", ".join(repr(i) for i in ids[:_EXAMPLES]) + more


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """One embedding per track.

    Attributes:
        track_ids: (n,) str.
        vectors: (n, d) float32.
        model_id: the model that produced every vector ("unknown" if the files do not say).
        feature_config_sha256: the front end it used ("unknown" if the files do not say).
        files: how many Parquet files were read.
    """

    track_ids: np.ndarray
    vectors: np.ndarray
    model_id: str
    feature_config_sha256: str
    files: int


def _vectors(column: pa.ChunkedArray, where: str) -> np.ndarray:
    """(n, d) float32 from a list or fixed-size-list column of numbers, every row of one length."""
    kind = column.type
    is_list = pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not is_list or not (pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise ConfigError(f"{where}: column {schema.EMBEDDING!r} must be a list of numbers; got {kind}")
    if column.null_count:
        raise ConfigError(f"{where}: column {schema.EMBEDDING!r} has {column.null_count} null rows")
    lengths = np.unique(np.concatenate(
        [pc.list_value_length(chunk).to_numpy(zero_copy_only=False) for chunk in column.chunks] or [[]]))
    if len(lengths) > 1:
        raise ConfigError(f"{where}: embeddings of different lengths {lengths.tolist()[:_EXAMPLES]}")
    width = int(lengths[0]) if len(lengths) else 0
    # flatten() honours slice offsets, unlike .values.
    flat = [chunk.flatten() for chunk in column.chunks]
    if any(values.null_count for values in flat):
        raise ConfigError(f"{where}: column {schema.EMBEDDING!r} holds null values inside its lists")
    values = np.concatenate([v.to_numpy(zero_copy_only=False) for v in flat]) if flat else np.zeros(0)
    return values.astype(np.float32, copy=False).reshape(-1, width)


def _provenance(values: set, name: str, pattern: str) -> str:
    if len(values) != 1:
        shown = _examples(str(UNKNOWN if value is None else value) for value in values)
        raise ConfigError(f"{pattern!r} mixes {len(values)} values of {name!r} ({shown}); "
                          "probe one embedding model at a time")
    value = values.pop()
    return UNKNOWN if value is None else str(value)


def read_embeddings(pattern: str) -> Embeddings:
    """Read the Parquet files of `pattern`: an embed output directory (the files its
    manifest lists) or a glob (see the module docstring)."""
    paths = resolve_files(pattern, kind="embeddings")
    track_ids, vectors = [], []
    provenance: dict[str, set] = {name: set() for name in schema.PROVENANCE_COLUMNS}
    for path in paths:
        parquet = pq.ParquetFile(pa.BufferReader(fileio.read_bytes(path)))
        schema.check_schema_version(parquet.schema_arrow.metadata, where=path)
        names = parquet.schema_arrow.names
        absent = [name for name in (schema.TRACK_ID, schema.EMBEDDING) if name not in names]
        if absent:
            raise ConfigError(f"{path} lacks column(s) {absent}; a probe needs {schema.TRACK_ID!r} and a "
                              f"list column {schema.EMBEDDING!r} (columns: {names})")
        present = [name for name in schema.PROVENANCE_COLUMNS if name in names]
        table = parquet.read(columns=[schema.TRACK_ID, schema.EMBEDDING, *present])
        track_ids += [str(value) for value in table.column(schema.TRACK_ID).to_pylist()]
        vectors.append(_vectors(table.column(schema.EMBEDDING), path))
        for name, seen in provenance.items():
            seen.update(table.column(name).unique().to_pylist() if name in present else [None])
    widths = sorted({block.shape[1] for block in vectors if len(block)})
    if len(widths) > 1:
        raise ConfigError(f"the files of {pattern!r} hold embeddings of different sizes {widths}")
    ids = np.asarray(track_ids, dtype=object)
    _refuse_duplicates(ids, f"embeddings {pattern!r}")
    embeddings = Embeddings(
        track_ids=ids, vectors=np.concatenate([block.reshape(-1, widths[0] if widths else 0) for block in vectors]),
        model_id=_provenance(provenance["model_id"], "model_id", pattern),
        feature_config_sha256=_provenance(provenance["feature_config_sha256"], "feature_config_sha256", pattern),
        files=len(paths))
    logger.info("read %d embeddings (d=%d) from %d file(s); model %s", len(ids),
                embeddings.vectors.shape[1], len(paths), embeddings.model_id)
    return embeddings


def _refuse_duplicates(track_ids: np.ndarray, where: str) -> None:
    unique, counts = np.unique(track_ids, return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1]
        raise ConfigError(f"{where}: {len(repeated)} track_id(s) appear more than once: "
                          f"{_examples(repeated)}")


def read_labels(path: str) -> pa.Table:
    """A labels table (CSV or Parquet) with at least `track_id` and `split`."""
    return read_label_table(path, required=("track_id", "split"))


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


def build_targets(table: pa.Table, *, task: str, columns: tuple[str, ...],
                  track_ids: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Targets of `task` for every row of `table`, and the names of their labels/classes."""
    if task in ("multiclass", "key") and len(columns) != 1:
        raise ConfigError(f"task {task!r} takes one label column; got {list(columns)}")
    if task == "multilabel":
        if len(columns) != 1:
            raise ConfigError(f"task 'multilabel' takes one tags column; got {list(columns)}")
        tags = [split_tags(value) for value in _column(table, columns[0])]
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
