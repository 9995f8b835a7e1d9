"""The one file layer every package uses: local paths and `gs://` (any Beam filesystem).

Built on Beam's `FileSystems` rather than fsspec/gcsfs: Beam is already a hard dependency,
its workers resolve the same schemes with the same credentials, and a second GCS client
stack would be a second set of retries, auth and bugs to keep in step. Everything here
reads and writes bytes uncompressed (Beam would otherwise guess a codec from the name).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import uuid
from typing import BinaryIO, Iterable

_HASH_CHUNK_BYTES = 8 << 20
# Beam's own test for a scheme (FileSystems.URI_SCHEMA_PATTERN): no scheme, a local path.
_SCHEME = re.compile(r"(?P<scheme>[a-zA-Z][-a-zA-Z0-9+.]*)://.*")


def _filesystems():
    """Beam's FileSystems, imported on first use: importing Beam costs ~2 CPU-seconds,
    which a launcher that only reads a local sidecar to refuse a bad option never pays."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _raw():
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What a listing reports of one object: path, size in bytes, modification time (s)."""

    path: str
    size_bytes: int
    mtime_s: float


_GLOB_CHARS = re.compile(r"[*?\[]")


def is_glob(pattern: str) -> bool:
    """Whether `pattern` has wildcards (`*`, `?`, `[`), i.e. names files by matching."""
    return _GLOB_CHARS.search(pattern) is not None


def glob_start(pattern: str) -> int:
    """Index of the first wildcard in `pattern`, or its length when it has none."""
    match = _GLOB_CHARS.search(pattern)
    return len(pattern) if match is None else match.start()


def is_local(uri: str) -> bool:
    return _SCHEME.match(uri.strip()) is None


def join(base: str, *parts: str) -> str:
    return os.path.join(base, *parts) if is_local(base) else _filesystems().join(base, *parts)


def basename(uri: str) -> str:
    return _filesystems().split(uri)[1]


def dirname(uri: str) -> str:
    return _filesystems().split(uri)[0]


def exists(uri: str) -> bool:
    return os.path.exists(uri) if is_local(uri) else _filesystems().exists(uri)


def open_read(uri: str) -> BinaryIO:
    if is_local(uri):
        return open(uri, "rb")  # what Beam's local filesystem does, without importing Beam
    return _filesystems().open(uri, compression_type=_raw())


def open_write(uri: str) -> BinaryIO:
    """A new object (or file) at `uri`; local parent directories are created."""
    if is_local(uri):
        os.makedirs(os.path.dirname(os.path.abspath(uri)), exist_ok=True)
    return _filesystems().create(uri, compression_type=_raw())


def sha256_of(handle: BinaryIO) -> str:
    """Hex sha256 of what is left to read in `handle`, in 8 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    while chunk := handle.read(_HASH_CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as handle:
        return handle.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Whole-object write that readers see entirely or not at all: an object store's
    upload is atomic on close; on a local disk we write a sibling and rename it over."""
    if not is_local(uri):
        with open_write(uri) as handle:
            handle.write(data)
        return
    directory = os.path.dirname(os.path.abspath(uri))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(uri)}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, uri)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def list_files(pattern: str) -> list[FileInfo]:
    """Files matching a glob (`*`, `**`, `?`), sorted by path."""
    metadata = _filesystems().match([pattern])[0].metadata_list
    return sorted(
        (FileInfo(m.path, int(m.size_in_bytes), float(m.last_updated_in_seconds or 0.0)) for m in metadata),
        key=lambda info: info.path,
    )


def glob(pattern: str) -> list[str]:
    return [info.path for info in list_files(pattern)]


def delete(uris: Iterable[str]) -> None:
    """Deletes files; ones already gone are not an error (a re-run may repeat a clean-up)."""
    present = [uri for uri in uris if exists(uri)]
    if present:
        _filesystems().delete(present)


def rename(sources: list[str], destinations: list[str]) -> None:
    """Local: atomic renames. Object stores: copy then delete (not atomic; callers that
    need an atomic switch publish a manifest after the renames)."""
    if not sources:
        return
    for destination in destinations:
        if is_local(destination):
            os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    _filesystems().rename(sources, destinations)


def mkdirs(uri: str) -> None:
    """Local directories only: object stores have none."""
    if is_local(uri):
        os.makedirs(uri, exist_ok=True)


def remove_tree(uri: str) -> None:
    """Deletes a directory (or object prefix) and everything below it, if present."""
    if is_local(uri):
        import shutil

        shutil.rmtree(uri, ignore_errors=True)
        return
    delete(glob(join(uri, "**")))
