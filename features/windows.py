"""Where embedding windows sit on a log-mel timeline (SPEC §4), in frames.

Reference placement: centres every hop starting one hop in (hop, 2·hop, … < n_frames),
each window [c − w/2, c + w/2), centres clamped to [w/2, n_frames − w/2] so windows lie
inside the track; 3 s windows at 0.5 Hz on a 6 s track (601 frames) start at 50, 250
and 301. The reference also skips centres on multiples of 8000 frames (an artefact of
its chunked reading); we do not.
"""
from __future__ import annotations

import numpy as np

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


def cut_windows(log_mel: np.ndarray, starts: np.ndarray, window_frames: int) -> np.ndarray:
    """[n_windows, n_mels, window_frames] float32 (frequency first, as the model takes it)
    from a time-major [n_frames, n_mels] log-mel."""
    index = starts[:, None] + np.arange(window_frames)[None, :]
    return np.ascontiguousarray(np.transpose(log_mel[index], (0, 2, 1)), dtype=np.float32)
