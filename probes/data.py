"""Read a probe's inputs: track embeddings and labels.

Embeddings come from a reembed store (a Delta table, read through its log at its latest
version or an older one), an embed output directory (the files its manifest lists), a
glob, or any Parquet with a `track_id` column and an `embedding` column of lists of
numbers (a fixed-size list as the embed job writes, or a plain list as pandas writes):
embeddings of other models are probed the same way. The embed job's provenance
columns (`model_id`, `feature_config_sha256`) are used when present and reported as
"unknown" otherwise; a file that says it is musicrep's must have the schema version this
code reads. Both sides are read through `musicrep.fileio` (local paths and gs://). The
two sides are joined on `track_id`; a track on one side only is an error unless the
caller allows it, and then it is counted, never dropped silently.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from musicrep import fileio
from musicrep.errors import ConfigError, MusicrepError
from musicrep.labels import read_labels as read_label_table
from musicrep.labels import split_tags
from musicrep.manifest import read_manifest, resolve_files
from musicrep.contracts import schema
from musicrep.probes.keys import N_KEYS, key_name, parse_key
from musicrep.store import table as store_table

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
class EmbeddingSource:
    """Where a probe's embeddings were read (the report's `inputs.embeddings`).

    Attributes:
        kind: "delta" (a reembed store), "manifest" (an embed output directory), "glob"
            or "parquet" (one file).
        path: what --embeddings said.
        files: Parquet files read.
        version: the Delta table version read (None for the other kinds).
        version_timestamp: that version's commit time, ISO 8601 UTC.
        model_ids: every model id the input holds, before any selection.
        selected_model_id: the one kept by `model_id=` (None: the input had one).
    """

    kind: str
    path: str
    files: int
    version: int | None = None
    version_timestamp: str | None = None
    model_ids: tuple[str, ...] = ()
    selected_model_id: str | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"model_ids": list(self.model_ids)}


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """One embedding per track.

    Attributes:
        track_ids: (n,) str.
        vectors: (n, d) float32.
        model_id: the model that produced every vector ("unknown" if the files do not say).
        feature_config_sha256: the front end it used ("unknown" if the files do not say).
        source: where they were read.
    """

    track_ids: np.ndarray
    vectors: np.ndarray
    model_id: str
    feature_config_sha256: str
    source: EmbeddingSource

    @property
    def files(self) -> int:
        return self.source.files


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


def is_delta_table(path: str) -> bool:
    """Whether `path` is a Delta table (a reembed store): a folder with a `_delta_log`."""
    if fileio.is_glob(path):
        return False
    if fileio.is_local(path):
        return os.path.isdir(os.path.join(path.removeprefix("file://"), "_delta_log"))
    from deltalake.exceptions import DeltaError

    try:
        return store_table.open_table(path) is not None
    except DeltaError:
        return False


def _open_version(path: str, *, version: int | None, as_of: str | None,
                  options: dict[str, str] | None):
    """The store at `path` at its latest version, version `version` or the last version
    committed at or before `as_of` (ISO 8601; UTC when it has no zone), and that
    version's commit time."""
    from deltalake.exceptions import DeltaError

    delta = store_table.open_table(path, options)
    latest = delta.version()
    # delta-rs numbers the history of a time-travelled table from the loaded version down
    # as if it were the latest: commit times are looked up in the latest table's.
    times = _commit_times(delta)
    if version is not None:
        if not 0 <= version <= latest:
            raise ConfigError(f"the store at {path} has versions 0..{latest}; no version {version}")
        delta.load_as_version(version)
    elif as_of is not None:
        try:
            moment = datetime.datetime.fromisoformat(as_of.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--as-of {as_of!r} is not an ISO 8601 time "
                              "(e.g. 2026-12-01T02:00:00Z)") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.timezone.utc)
        try:
            delta.load_as_version(moment)
            committed = times.get(delta.version())
        except DeltaError:
            committed = None
        # delta-rs falls back to the first version for a time before it.
        if committed is None or committed > moment:
            raise ConfigError(f"the store at {path} has no version committed at or before "
                              f"{moment.isoformat()}")
    return delta, times.get(delta.version())


def _commit_times(delta) -> dict[int, datetime.datetime]:
    """Version → commit time of every version of the (latest) table."""
    return {entry["version"]: datetime.datetime.fromtimestamp(entry["timestamp"] / 1000, datetime.timezone.utc)
            for entry in delta.history() if entry.get("timestamp") is not None}


def _iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _read_delta(path: str, *, version: int | None, as_of: str | None,
                options: dict[str, str] | None) -> tuple[EmbeddingSource, list[tuple[str, pa.Table]]]:
    # Through the Delta log (musicrep.store.table), never the files under data/: those
    # include superseded and uncommitted files until vacuum.
    delta, committed = _open_version(path, version=version, as_of=as_of, options=options)
    names = store_table.arrow_schema_of(delta).names
    present = [name for name in schema.PROVENANCE_COLUMNS if name in names]
    table = delta.to_pyarrow_table(columns=[schema.TRACK_ID, schema.EMBEDDING, *present])
    where = f"{path} (version {delta.version()})"
    source = EmbeddingSource(kind="delta", path=path, files=len(store_table.data_files(delta)),
                             version=delta.version(), version_timestamp=_iso(committed))
    return source, [(where, table)]


def _read_files(pattern: str) -> tuple[EmbeddingSource, list[tuple[str, pa.Table]]]:
    if not fileio.is_glob(pattern) and fileio.is_local(pattern) and os.path.isdir(pattern) \
            and read_manifest(pattern.rstrip("/")) is None:
        raise ConfigError(f"{pattern} is a directory but neither a store (no _delta_log) nor a "
                          "committed embed output (no _MANIFEST.json); give a Parquet file or a glob")
    kind = ("glob" if fileio.is_glob(pattern)
            else "manifest" if read_manifest(pattern.rstrip("/")) is not None else "parquet")
    paths = resolve_files(pattern, kind="embeddings")
    tables = []
    for path in paths:
        parquet = pq.ParquetFile(pa.BufferReader(fileio.read_bytes(path)))
        _refuse_store_file(parquet.schema_arrow.metadata, path)
        schema.check_schema_version(parquet.schema_arrow.metadata, where=path)
        names = parquet.schema_arrow.names
        absent = [name for name in (schema.TRACK_ID, schema.EMBEDDING) if name not in names]
        if absent:
            raise ConfigError(f"{path} lacks column(s) {absent}; a probe needs {schema.TRACK_ID!r} and a "
                              f"list column {schema.EMBEDDING!r} (columns: {names})")
        present = [name for name in schema.PROVENANCE_COLUMNS if name in names]
        tables.append((path, parquet.read(columns=[schema.TRACK_ID, schema.EMBEDDING, *present])))
    return EmbeddingSource(kind=kind, path=pattern, files=len(paths)), tables


def _refuse_store_file(metadata: dict[bytes, bytes] | None, path: str) -> None:
    # A store's data/ folder holds superseded and uncommitted files until vacuum: only
    # its log says which rows are current.
    if (metadata or {}).get(b"musicrep_schema", b"").decode() == schema.STORE_SCHEMA_VERSION:
        root = path.rsplit(f"/{store_table.DATA_DIR}/", 1)[0]
        raise ConfigError(f"{path} is a data file of the store {root}: give --embeddings {root} "
                          "(read through its Delta log; its data/ folder also holds superseded rows)")


def _model_ids(tables: list[tuple[str, pa.Table]]) -> list[str]:
    seen = set()
    for _, table in tables:
        if "model_id" not in table.column_names:
            seen.add(UNKNOWN)
            continue
        seen.update(UNKNOWN if value is None else str(value)
                    for value in table.column("model_id").unique().to_pylist())
    return sorted(seen)


def _read_sources(spec: str, *, version: int | None, as_of: str | None,
                  options: dict[str, str] | None) -> tuple[EmbeddingSource, list[tuple[str, pa.Table]]]:
    if is_delta_table(spec):
        source, tables = _read_delta(spec.rstrip("/"), version=version, as_of=as_of, options=options)
    elif version is not None or as_of is not None:
        raise ConfigError(f"--version and --as-of travel in a store's history; {spec!r} is not a "
                          "store (Delta table)")
    else:
        source, tables = _read_files(spec)
    return dataclasses.replace(source, model_ids=tuple(_model_ids(tables))), tables


def list_model_ids(spec: str, *, version: int | None = None, as_of: str | None = None,
                   options: dict[str, str] | None = None) -> list[str]:
    """The model ids in the embeddings `spec` names ("unknown" for rows that do not say)."""
    return list(_read_sources(spec, version=version, as_of=as_of, options=options)[0].model_ids)


def read_embeddings(spec: str, *, version: int | None = None, as_of: str | None = None,
                    model_id: str | None = None, options: dict[str, str] | None = None) -> Embeddings:
    """Read the embeddings `spec` names: a reembed store (Delta table; its latest version,
    `version`, or the one current at `as_of`), an embed output directory (the files its
    manifest lists), a glob, or one Parquet file (see the module docstring).

    Input holding several model ids is refused with their names unless `model_id` picks
    one; `options` are delta-rs storage options (a store only)."""
    source, tables = _read_sources(spec, version=version, as_of=as_of, options=options)
    if model_id is not None:
        if model_id not in source.model_ids:
            raise ConfigError(f"no embeddings of model {model_id!r} in {spec!r}; it holds "
                              f"{_examples(source.model_ids)}")
        source = dataclasses.replace(source, selected_model_id=model_id)
        tables = [(where, _rows_of_model(table, model_id)) for where, table in tables]
    elif len(source.model_ids) > 1:
        raise ConfigError(f"{spec!r} holds embeddings of {len(source.model_ids)} models "
                          f"({_examples(source.model_ids)}); pick one with --model-id or probe "
                          "each with --each-model")
    if not sum(table.num_rows for _, table in tables):
        shown = f" at version {source.version}" if source.kind == "delta" else ""
        raise ConfigError(f"{spec!r} holds no embeddings{shown}")
    track_ids, vectors = [], []
    provenance: dict[str, set] = {name: set() for name in schema.PROVENANCE_COLUMNS}
    for where, table in tables:
        track_ids += [str(value) for value in table.column(schema.TRACK_ID).to_pylist()]
        vectors.append(_vectors(table.column(schema.EMBEDDING), where))
        for name, seen in provenance.items():
            seen.update(table.column(name).unique().to_pylist() if name in table.column_names else [None])
    widths = sorted({block.shape[1] for block in vectors if len(block)})
    if len(widths) > 1:
        raise ConfigError(f"the files of {spec!r} hold embeddings of different sizes {widths}")
    ids = np.asarray(track_ids, dtype=object)
    _refuse_duplicates(ids, f"embeddings {spec!r}")
    embeddings = Embeddings(
        track_ids=ids, vectors=np.concatenate([block.reshape(-1, widths[0] if widths else 0) for block in vectors]),
        model_id=_provenance(provenance["model_id"], "model_id", spec),
        feature_config_sha256=_provenance(provenance["feature_config_sha256"], "feature_config_sha256", spec),
        source=source)
    shown = f"version {source.version} of " if source.kind == "delta" else ""
    logger.info("read %d embeddings (d=%d) from %s%s (%s, %d file(s)); model %s", len(ids),
                embeddings.vectors.shape[1], shown, spec, source.kind, source.files, embeddings.model_id)
    return embeddings


def _rows_of_model(table: pa.Table, model_id: str) -> pa.Table:
    if "model_id" not in table.column_names:
        return table if model_id == UNKNOWN else table.slice(0, 0)
    column = table.column("model_id")
    keep = pc.is_null(column) if model_id == UNKNOWN else pc.fill_null(pc.equal(column, model_id), False)
    return table.filter(keep)


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
        model_id, feature_config_sha256: the embeddings' provenance.
        source: where the embeddings were read.
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
    source: EmbeddingSource | None = None

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
        missing=missing, source=embeddings.source)
