"""Where embedding windows sit on a log-mel timeline (SPEC §4), in frames.

Reference placement: centres every hop starting one hop in (hop, 2·hop, … < n_frames),
each window [c − w/2, c + w/2), centres clamped to [w/2, n_frames − w/2] so windows lie
inside the track; 3 s windows at 0.5 Hz on a 6 s track (601 frames) start at 50, 250
and 301. The reference also skips centres on multiples of 8000 frames (an artefact of
its chunked reading); we do not.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

from musicrep.errors import ConfigError, TooShortError
from musicrep.features.config import DEFAULT_FEATURE_CONFIG, FeatureConfig

AGGREGATES = ("mean", "max")
LOG_MEL_ON = ("cpu", "device")  # where the log-mel is computed (see WindowSpec.log_mel_on)


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How a track becomes windows and one vector: window and hop (seconds, as asked),
    at most `max_windows` windows (None: all), pooled by `aggregate`, from the first
    `max_duration_s` seconds of the track (None: all of it); `log_mel_on`: "cpu" (the
    features/ front end) or "device" (TF ops in the model's graph: embed --audio only).

    Validated on construction, so a launcher that builds one refuses a bad setting before
    any work; `frames(config)` converts to the frame grid of the front end, and refuses
    settings that round to no frame at all.
    """

    window_s: float = 3.0
    hop_s: float = 2.0
    max_windows: int | None = None
    aggregate: str = "mean"
    max_duration_s: float | None = None
    log_mel_on: str = "cpu"

    def __post_init__(self) -> None:
        if self.log_mel_on not in LOG_MEL_ON:
            raise ConfigError(f"log_mel_on must be one of {LOG_MEL_ON}, got {self.log_mel_on!r}")
        if self.max_duration_s is not None and not self.max_duration_s > 0:
            raise ConfigError(f"max duration must be > 0 s (or unset for all), got {self.max_duration_s}")
        if not (self.window_s > 0 and self.hop_s > 0):
            raise ConfigError(f"window and hop must be > 0 s, got window {self.window_s} s, hop {self.hop_s} s")
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError(f"max windows must be >= 1 (or unset for all), got {self.max_windows}")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")

    def frames(self, config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> tuple[int, int]:
        """(window frames, hop frames) on `config`'s frame grid; both at least one frame."""
        fps = config.frames_per_second
        window_frames, hop_frames = int(round(self.window_s * fps)), int(round(self.hop_s * fps))
        if window_frames < 1 or hop_frames < 1:
            raise ConfigError(
                f"window {self.window_s} s and hop {self.hop_s} s give {window_frames} and {hop_frames} frames "
                f"at {fps:g} frames/s; each needs at least one frame ({1 / fps:g} s)"
            )
        return window_frames, hop_frames

    def key(self, config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> str:
        """The settings as they act on `config`'s frame grid, as canonical JSON: two specs
        with one key give the same rows (written into every row, compared by
        --skip-existing and the store to decide what is unchanged)."""
        window_frames, hop_frames = self.frames(config)
        settings = {
            "window_frames": window_frames,
            "hop_frames": hop_frames,
            "max_windows": self.max_windows,
            "aggregate": self.aggregate,
        }
        if self.max_duration_s is not None:
            # Only when set: rows of runs without the cap keep the key they always had.
            settings["max_duration_s"] = self.max_duration_s
        if self.log_mel_on != "cpu":
            # Rows say which front end made them (the device one differs by ≤ 1e-4).
            settings["log_mel_on"] = self.log_mel_on
        return json.dumps(settings, sort_keys=True, separators=(",", ":"))

    def max_samples(self, config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> int | None:
        """Samples of `config`'s waveform within max_duration_s (None: no cap)."""
        if self.max_duration_s is None:
            return None
        return max(1, int(round(self.max_duration_s * config.sample_rate_hz)))

    def max_frames(self, config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> int | None:
        """Frames of the log-mel of max_samples (None: no cap)."""
        samples = self.max_samples(config)
        return None if samples is None else config.n_frames(samples)

    def pool(self, windows: np.ndarray) -> np.ndarray:
        """[n_windows, d] → [d] float32 by the spec's aggregate."""
        pooled = windows.mean(axis=0) if self.aggregate == "mean" else windows.max(axis=0)
        return pooled.astype(np.float32)


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


def cut_windows(log_mel: np.ndarray, starts: np.ndarray, window_frames: int) -> np.ndarray:
    """[n_windows, n_mels, window_frames] float32 (frequency first, as the model takes it)
    from a time-major [n_frames, n_mels] log-mel."""
    index = starts[:, None] + np.arange(window_frames)[None, :]
    return np.ascontiguousarray(np.transpose(log_mel[index], (0, 2, 1)), dtype=np.float32)


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
