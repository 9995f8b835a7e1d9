"""How inputs name tracks: a glob of audio files (track id = the path below the glob's
fixed prefix, without extension) or a manifest (CSV/Parquet with track_id, uri)."""
from __future__ import annotations

from musicrep import fileio


def is_manifest(source: str) -> bool:
    return source.lower().endswith((".csv", ".parquet")) and not fileio.is_glob(source)


def glob_prefix(pattern: str) -> str:
    """The fixed directory part of a glob: everything up to the last '/' before a wildcard."""
    head = pattern[: fileio.glob_start(pattern)]
    return head[: head.rfind("/") + 1]


def track_id_for(path: str, prefix: str) -> str:
    """Default track id: the path relative to the glob's fixed prefix, without extension."""
    relative = path[len(prefix) :] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
    stem, dot, extension = relative.rpartition(".")
    return stem if dot and "/" not in extension else relative
