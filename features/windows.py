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


@dataclasses.dataclass(frozen=True)
class WindowSpec:
    """How a track becomes windows and one vector: window and hop (seconds, as asked),
    at most `max_windows` windows (None: all), pooled by `aggregate`.

    Validated on construction, so a launcher that builds one refuses a bad setting before
    any work; `frames(config)` converts to the frame grid of the front end, and refuses
    settings that round to no frame at all.
    """

    window_s: float = 3.0
    hop_s: float = 2.0
    max_windows: int | None = None
    aggregate: str = "mean"

    def __post_init__(self) -> None:
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
        return json.dumps(settings, sort_keys=True, separators=(",", ":"))

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
