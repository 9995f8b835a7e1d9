"""The feature settings, as one versioned record written next to every output.

The defaults are the reference front end of SPEC §1 (the one the released MULE weights
were trained with); an embedding can always be traced back to them through
`FeatureConfig.sha256()`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from musicrep.errors import ConfigError

FEATURE_VERSION = "musicrep-logmel-1"
RESAMPLERS = ("kaiser_best", "soxr_hq")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Every setting of decode → resample → log-mel.

    Attributes:
      decode_rate_hz: rate the codec output is first converted to, as 16-bit PCM (the
        reference pipes everything through `ffmpeg -acodec pcm_s16le -ar 44100`).
      pcm_scale: factor applied to each 16-bit sample (the reference divides by 2**16,
        so one channel spans [-0.5, 0.5)).
      downmix: how channels become mono; "sum" as the reference does (a mono file has
        half the level of a stereo file with L = R).
      sample_rate_hz: rate of the waveform the spectrogram is computed on.
      resampler: band-limited resampler used for decode_rate_hz → sample_rate_hz:
        "kaiser_best" (the reference's filter, see features/audio.py) or "soxr_hq"
        (libsoxr HQ: faster, but its top mel bands differ from the reference's).
      n_fft, win_samples, hop_samples: STFT sizes; the Hann window of win_samples is
        centred in an FFT of n_fft.
      center, pad_mode: frames are centred on multiples of hop_samples, the signal
        reflect-padded at both ends.
      n_mels, fmin_hz, fmax_hz, mel_scale, mel_norm: the mel filterbank (HTK scale,
        each triangle scaled to unit L2 norm when mel_norm = 2).
      log_gain: compression log10(1 + log_gain · mel_power).
    """

    decode_rate_hz: int = 44100
    pcm_scale: float = 1.0 / 65536.0
    downmix: str = "sum"
    sample_rate_hz: int = 16000
    resampler: str = "kaiser_best"
    n_fft: int = 2048
    win_samples: int = 400
    hop_samples: int = 160
    window: str = "hann"
    center: bool = True
    pad_mode: str = "reflect"
    n_mels: int = 96
    fmin_hz: float = 0.0
    fmax_hz: float = 8000.0
    mel_scale: str = "htk"
    mel_norm: float = 2.0
    log_gain: float = 10000.0
    version: str = FEATURE_VERSION

    def __post_init__(self) -> None:
        if self.win_samples > self.n_fft:
            raise ConfigError(f"win_samples={self.win_samples} exceeds n_fft={self.n_fft}")
        if not 0 <= self.fmin_hz < self.fmax_hz <= self.sample_rate_hz / 2:
            raise ConfigError(
                f"need 0 <= fmin_hz < fmax_hz <= sample_rate_hz/2, got "
                f"fmin_hz={self.fmin_hz}, fmax_hz={self.fmax_hz}, sample_rate_hz={self.sample_rate_hz}"
            )
        if self.resampler not in RESAMPLERS:
            raise ConfigError(f"resampler must be one of {RESAMPLERS}, got {self.resampler!r}")
        if self.downmix != "sum" or self.window != "hann" or self.pad_mode != "reflect":
            raise ConfigError(
                "only downmix='sum', window='hann', pad_mode='reflect' are implemented, got "
                f"{self.downmix!r}, {self.window!r}, {self.pad_mode!r}"
            )

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate_hz / self.hop_samples

    def n_frames(self, n_samples: int) -> int:
        """Frames for a waveform of n_samples: 1 + n_samples // hop_samples (centred frames)."""
        return 1 + n_samples // self.hop_samples

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "FeatureConfig":
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ConfigError(f"unknown feature settings {sorted(unknown)} in {text!r}")
        return cls(**fields)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()


DEFAULT_FEATURE_CONFIG = FeatureConfig()
