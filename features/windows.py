"""Where embedding windows sit on a log-mel timeline (SPEC §4), in frames.

Reference placement: centres every hop starting one hop in (hop, 2·hop, … < n_frames),
each window [c − w/2, c + w/2), centres clamped to [w/2, n_frames − w/2] so windows lie
inside the track; 3 s windows at 0.5 Hz on a 6 s track (601 frames) start at 50, 250
and 301. The reference also skips centres on multiples of 8000 frames (an artefact of
its chunked reading); we do not.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from musicrep.contracts.window_spec import AGGREGATES
from musicrep.errors import ConfigError, TooShortError

def window_starts(
    n_frames: int,
    *,
    window_frames: int,
    hop_frames: int,
    max_windows: int | None = None,
    min_frames: int = 1,
) -> tuple[np.ndarray, int]:
    """First frame of each window, and the window length actually used.

    A track shorter than one window gives one window of its whole length, provided it
    has at least `min_frames` (the network's minimum input).

    Returns:
      (starts int64 [n_windows], window length in frames).

    Raises:
      TooShortError: n_frames < min_frames.
    """
    if window_frames < 1 or hop_frames < 1:
        raise ConfigError(f"window and hop must be >= 1 frame, got {window_frames} and {hop_frames}")
    if max_windows is not None and max_windows < 1:
        raise ConfigError(f"max_windows must be >= 1, got {max_windows}")
    if n_frames < min_frames:
        raise TooShortError(f"{n_frames} frames is shorter than the network's minimum of {min_frames}")
    if n_frames <= window_frames:
        return np.zeros(1, np.int64), n_frames
    half = window_frames // 2
    centres = np.arange(hop_frames, n_frames, hop_frames, dtype=np.int64)
    if centres.size == 0:
        centres = np.array([hop_frames], np.int64)
    if max_windows is not None:
        centres = centres[:max_windows]
    centres = np.clip(centres, half, n_frames - (window_frames - half))
    return centres - half, window_frames


def cut_windows(
    log_mel: np.ndarray, starts: np.ndarray, window_frames: int, out: np.ndarray | None = None
) -> np.ndarray:
    """[n_windows, n_mels, window_frames] float32 (frequency first, as the model takes it)
    from a time-major [n_frames, n_mels] log-mel; into `out` when given (that shape)."""
    if out is None:
        out = np.empty((len(starts), log_mel.shape[1], window_frames), np.float32)
    # A transposing copy per window: 4x faster than one fancy-indexed gather of every
    # window's frames followed by a transpose of the lot (12,000 frames, 59 windows).
    for window, start in zip(out, starts):
        window[...] = log_mel[start : start + window_frames].T
    return out


@dataclasses.dataclass(frozen=True)
class WindowChunk:
    """Consecutive windows of one track: `log_mel` [k, n_mels] holds the frames they read,
    from track frame `first_frame`; `starts` are relative to it."""

    first_frame: int
    log_mel: np.ndarray
    starts: np.ndarray
    window_frames: int


class WindowStream:
    """`window_starts` + `cut_windows` on a log-mel that arrives in blocks of frames.

    A window is given out as soon as its frames are in and its place cannot change:
    window_starts clamps only centres within a window of the end, and those wait for
    `finish(n_frames)`. Each chunk holds at most `max_chunk_windows` windows; between
    chunks only the frames a later window may read are kept (at least the last window's
    worth), so memory is bounded by the chunk, not the track. The windows are exactly
    window_starts' (tests/features/test_streaming.py).
    """

    def __init__(
        self,
        *,
        window_frames: int,
        hop_frames: int,
        max_windows: int | None = None,
        min_frames: int = 1,
        max_chunk_windows: int = 128,
    ):
        # window_starts' own checks of the settings, before any frame comes.
        window_starts(window_frames, window_frames=window_frames, hop_frames=hop_frames, max_windows=max_windows)
        self._w, self._hop = window_frames, hop_frames
        self._half = window_frames // 2
        self._max_windows, self._min_frames = max_windows, min_frames
        self._max_chunk = max_chunk_windows
        self._blocks: list[np.ndarray] = []
        self._buffer_start = 0  # track frame of the first kept frame
        self._n_frames = 0
        self._n_windows = 0  # windows given out

    @property
    def n_windows(self) -> int:
        """Windows given out so far."""
        return self._n_windows

    @property
    def window_frames(self) -> int:
        """The window length in frames (after `finish`: the one the track got)."""
        return self._w

    def push(self, block: np.ndarray) -> list[WindowChunk]:
        if block.shape[0] == 0:
            return []
        self._blocks.append(block)
        self._n_frames += block.shape[0]
        if self._n_frames <= self._w:
            return []  # may yet be a track of one window of its whole length
        # Centre c = (i + 1)·hop of window i keeps its place once c + w − w/2 ≤ n_frames.
        limit = (self._n_frames - (self._w - self._half)) // self._hop
        if self._max_windows is not None:
            limit = min(limit, self._max_windows)
        centres = np.arange(self._n_windows + 1, limit + 1, dtype=np.int64) * self._hop
        return self._cut(np.maximum(centres, self._half) - self._half)

    def finish(self) -> list[WindowChunk]:
        """The remaining windows, now that the track has ended. Raises TooShortError."""
        starts, length = window_starts(
            self._n_frames,
            window_frames=self._w,
            hop_frames=self._hop,
            max_windows=self._max_windows,
            min_frames=self._min_frames,
        )
        self._w = length
        return self._cut(starts[self._n_windows :])

    def _cut(self, starts: np.ndarray) -> list[WindowChunk]:
        if starts.size == 0:
            self._trim()
            return []
        frames = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
        self._blocks = [frames]
        chunks = []
        for begin in range(0, starts.size, self._max_chunk):
            part = starts[begin : begin + self._max_chunk]
            lo, hi = int(part[0]) - self._buffer_start, int(part[-1]) + self._w - self._buffer_start
            chunks.append(
                WindowChunk(
                    first_frame=int(part[0]),
                    log_mel=frames[lo:hi].copy(),
                    starts=part - part[0],
                    window_frames=self._w,
                )
            )
            self._n_windows += part.size
        self._trim()
        return chunks

    def _trim(self) -> None:
        # Keep what the next window (unclamped) or a window clamped to the end may read.
        if self._max_windows is not None and self._n_windows >= self._max_windows:
            keep_from = self._n_frames
        else:
            next_start = max((self._n_windows + 1) * self._hop, self._half) - self._half
            keep_from = min(next_start, self._n_frames - self._w)
        drop = max(keep_from - self._buffer_start, 0)
        if drop:
            frames = np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
            self._blocks = [frames[drop:]]
            self._buffer_start += drop


class OnlinePool:
    """`WindowSpec.pool` over windows that arrive in chunks: a running float64 sum (mean)
    or maximum; partial pools of one track merge in any order."""

    def __init__(self, aggregate: str, size: int):
        if aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
        self.aggregate = aggregate
        self.count = 0
        self.value = np.zeros(size, np.float64) if aggregate == "mean" else np.full(size, -np.inf, np.float32)

    def add(self, windows: np.ndarray) -> "OnlinePool":
        if windows.shape[0]:
            if self.aggregate == "mean":
                self.value += windows.sum(axis=0, dtype=np.float64)
            else:
                np.maximum(self.value, windows.max(axis=0), out=self.value)
            self.count += windows.shape[0]
        return self

    def merge(self, other: "OnlinePool") -> "OnlinePool":
        if self.aggregate == "mean":
            self.value += other.value
        else:
            np.maximum(self.value, other.value, out=self.value)
        self.count += other.count
        return self

    def result(self) -> np.ndarray:
        if self.aggregate == "mean":
            return (self.value / max(self.count, 1)).astype(np.float32)
        return self.value.astype(np.float32)
