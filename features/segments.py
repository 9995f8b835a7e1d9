"""A long track's log-mel as shard segments: cut to a fixed size, and kept on local disk
until the track has decoded to its end. Pure numpy, so the features job's workers (which
only receive blocks from their front-end process) import neither PyAV nor scipy."""
from __future__ import annotations

import tempfile
from typing import Iterator

import numpy as np

from musicrep.errors import ConfigError

# Frames per shard record of a long track: 65,536 frames (10.9 min) are 12.6 MB of
# float16 or 25 MB of float32, far below protobuf's 2 GB and the 64 MB record bound.
SEGMENT_FRAMES = 1 << 16


class Segmenter:
    """Cuts a stream of log-mel blocks into segments of `segment_frames` (the last one
    shorter): `push` returns the segments completed, always keeping at least one frame
    back so that `finish` has the final segment to mark. Segments are (frame offset,
    frames)."""

    def __init__(self, segment_frames: int = SEGMENT_FRAMES):
        if segment_frames < 1:
            raise ConfigError(f"segment_frames must be >= 1, got {segment_frames}")
        self._size = segment_frames
        self._blocks: list[np.ndarray] = []
        self._held = 0
        self._offset = 0

    def push(self, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        self._blocks.append(block)
        self._held += block.shape[0]
        out = []
        if self._held > self._size:
            frames = np.concatenate(self._blocks)
            while frames.shape[0] > self._size:
                out.append((self._offset, frames[: self._size].copy()))
                self._offset += self._size
                frames = frames[self._size :]
            self._blocks, self._held = [frames.copy()], frames.shape[0]
        return out

    def finish(self) -> tuple[int, np.ndarray]:
        frames = np.concatenate(self._blocks) if self._blocks else np.zeros((0, 0), np.float32)
        self._blocks, self._held = [], 0
        return self._offset, frames


class SegmentSpill:
    """Segments of a track that may not go out yet (the features job writes a track only
    once it has decoded to its end), kept in an unnamed local temporary file, gone when
    closed or when the process dies: memory holds one segment at a time whatever the
    track's length. `add(offset, frames)` them in order; iterating gives them back."""

    def __init__(self, directory: str | None = None):
        self._directory = directory
        self._file = None
        self._index: list[tuple[int, tuple[int, ...], np.dtype]] = []

    def add(self, offset: int, frames: np.ndarray) -> None:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._directory)
        frames = np.ascontiguousarray(frames)
        self._index.append((offset, frames.shape, frames.dtype))
        self._file.write(memoryview(frames).cast("B"))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        if self._file is None:
            return
        self._file.seek(0)
        for offset, shape, dtype in self._index:
            frames = np.empty(shape, dtype)
            self._file.readinto(memoryview(frames).cast("B"))
            yield offset, frames

    @property
    def closed(self) -> bool:
        """Whether the spill's file is gone (it is made on the first segment)."""
        return self._file is None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._index = []

    def __enter__(self) -> "SegmentSpill":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
