"""The manifest of a committed output directory, and the readers' side of it.

A job writes its files into a staging folder and, once the run succeeded, moves them to
names carrying the run id and writes `DIR/_MANIFEST.json` (see musicrep.pipelines.commit).
The manifest is the switch: a reader that resolves its inputs here sees the complete set
of one run, never a mix, whatever was killed when. Files of a directory with a manifest
that the manifest does not list are leftovers of an unfinished run or commit; readers
skip them.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from musicrep import fileio
from musicrep.errors import ConfigError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "_MANIFEST.json"
MANIFEST_VERSION = "musicrep-manifest-1"


def read_manifest(directory: str) -> dict[str, Any] | None:
    """The directory's manifest, or None when it has none (never committed)."""
    path = fileio.join(directory, MANIFEST_NAME)
    if not fileio.exists(path):
        return None
    manifest = json.loads(fileio.read_text(path))
    if manifest.get("version") != MANIFEST_VERSION:
        raise ConfigError(f"{path}: unknown manifest version {manifest.get('version')!r}")
    return manifest


def committed_files(manifest: dict[str, Any], directory: str, kind: str | None = None) -> list[str]:
    """Full paths of the manifest's files (of one kind, e.g. "features"), sorted."""
    return sorted(
        fileio.join(directory, entry["name"]) for entry in manifest["files"] if kind is None or entry["kind"] == kind
    )


def resolve_files(pattern: str, *, kind: str) -> list[str]:
    """The files a reader should read for `pattern`, sorted; ConfigError when none.

    `pattern` is either a committed output directory (its manifest's files of `kind`) or
    a glob (local or gs://). A glob's matches that lie in a directory with a manifest are
    kept only if that manifest lists them, so a glob never mixes two runs either.
    """
    if not fileio.is_glob(pattern):
        manifest = read_manifest(pattern.rstrip("/"))
        if manifest is not None:
            files = committed_files(manifest, pattern.rstrip("/"), kind)
            if not files:
                raise ConfigError(f"the manifest of {pattern!r} lists no {kind} files")
            return files
    try:
        matched = fileio.glob(pattern)
    except Exception as error:  # Beam raises BeamIOError or OSError depending on the scheme
        raise ConfigError(f"cannot list {pattern!r}: {error}") from error
    kept, skipped = [], []
    listed: dict[str, set[str] | None] = {}
    for path in matched:
        # dirname makes a local path absolute, and so are the manifest's: compare the
        # same spelling (a relative glob, `feat/features-*`, matches relative paths).
        directory = fileio.dirname(path)
        path = fileio.join(directory, fileio.basename(path))
        if directory not in listed:
            manifest = read_manifest(directory)
            listed[directory] = None if manifest is None else set(committed_files(manifest, directory))
        (kept if listed[directory] is None or path in listed[directory] else skipped).append(path)
    if not matched:
        raise ConfigError(f"no file matches {pattern!r}")
    if skipped:
        logger.info("skipped %d file(s) of %r that no manifest lists (an unfinished run's)", len(skipped), pattern)
    if not kept:
        raise ConfigError(f"no committed {kind} files match {pattern!r} (only files no manifest lists)")
    return kept
