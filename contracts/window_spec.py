"""How a track becomes windows and one vector: the settings every embedding row records
(`WindowSpec.key()` in its `window_spec` column), compared by --skip-existing and the
store to decide what is unchanged. Where the windows then sit is musicrep.features.windows.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.errors import ConfigError

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
        if self.max_duration_s is not None and not 0 < self.max_duration_s < math.inf:
            raise ConfigError(f"max duration must be a finite number > 0 s (or unset for all), got {self.max_duration_s}")
        if not (0 < self.window_s < math.inf and 0 < self.hop_s < math.inf):
            raise ConfigError(
                f"window and hop must be finite numbers > 0 s, got window {self.window_s} s, hop {self.hop_s} s"
            )
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
