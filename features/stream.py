"""A track as a stream: decode → resample → log-mel in blocks of frames, and the blocks
cut into shard segments, so no stage holds more than a few blocks of any track.

The numbers are those of the whole-array path (`decode` then `log_mel`): the blocks
concatenate to its log-mel (tests/features/test_streaming.py).
"""
from __future__ import annotations

import time
from typing import BinaryIO, Callable, Iterator

import numpy as np

from musicrep.errors import ConfigError, TrackTimeoutError
from musicrep.features.audio import decode_chunks
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.features.log_mel import LogMelStream

# Frames per shard record of a long track: 65,536 frames (10.9 min) are 12.6 MB of
# float16 or 25 MB of float32, far below protobuf's 2 GB and the 64 MB record bound.
SEGMENT_FRAMES = 1 << 16


class Stopwatch:
    """Time spent on one track against its budget (seconds, None: none); `check()`
    raises TrackTimeoutError past it (checked between decoded chunks, ~6 s of audio)."""

    def __init__(self, budget_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._budget_s, self._clock = budget_s, clock
        self._started = clock()

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._started

    def check(self) -> None:
        if self._budget_s is None:
            return
        elapsed_s = self.elapsed_s
        if elapsed_s > self._budget_s:
            raise TrackTimeoutError(f"gave up after {elapsed_s:.1f} s (the per-track time budget is {self._budget_s:g} s)")


class TrackLogMel:
    """Iterating gives the track's log-mel [frames, n_mels] in non-empty blocks (~6 s
    each); with max_samples, the log-mel of the waveform's first that many samples.
    After the iteration, `n_samples` and `duration_s` are the waveform's.

    The iteration raises AudioDecodeError (decode), ConfigError (log-mel) or
    TrackTimeoutError (past the stopwatch's budget).
    """

    def __init__(
        self,
        source: bytes | BinaryIO,
        *,
        config: FeatureConfig = DEFAULT_FEATURE_CONFIG,
        max_samples: int | None = None,
        stopwatch: Stopwatch | None = None,
    ):
        self._source, self._config = source, config
        self._max_samples = max_samples
        self._stopwatch = stopwatch or Stopwatch()
        self.n_samples = 0

    @property
    def duration_s(self) -> float:
        return self.n_samples / self._config.sample_rate_hz

    def __iter__(self) -> Iterator[np.ndarray]:
        stream = LogMelStream(self._config)
        remaining = self._max_samples
        for chunk in decode_chunks(self._source, config=self._config):
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= chunk.size
            self.n_samples += chunk.size
            block = stream.push(chunk)
            if block.shape[0]:
                yield block
            self._stopwatch.check()
            if remaining == 0:
                break  # closes the decoder: the rest of the file is never read
        block = stream.finish()
        if block.shape[0]:
            yield block


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

    @property
    def frames_out(self) -> int:
        """Frames in the segments given out so far."""
        return self._offset

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
