"""Log-mel spectrogram of SPEC §1, layered: filterbank → power spectrogram → mel → log.

Pure numpy/scipy. Identical to
`librosa.feature.melspectrogram(..., n_fft=2048, win_length=400, hop_length=160,
center=True, pad_mode="reflect", htk=True, norm=2.0)` followed by log10(1 + 10000·M), but
faster: the Hann window of 400 samples is zero outside the centre of the 2048-sample
frame, so only those 400 samples are framed and the FFT zero-pads them to 2048. The
circular shift this implies changes only the phase, not |STFT|². The mel product skips
the filterbank's zeros (each band covers a few dozen of the 1025 bins): it runs on
groups of bands, each over the bins its triangles cover.
"""
from __future__ import annotations

import functools

import numpy as np

from musicrep.errors import ConfigError
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig

# Frames are processed in blocks so a 60-minute track never holds a [frames, n_fft]
# array. 256 frames x 2048 float32 is 2 MiB of scratch, near a core's L2: per 720 s of
# audio the log-mel took 0.26 CPU-s against 0.32 in blocks of 1024 with one BLAS thread,
# and 0.26 against 0.60 with two, where the larger products start BLAS threads (Zen 4).
_BLOCK_FRAMES = 256


@functools.lru_cache(maxsize=8)
def mel_filterbank(config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> np.ndarray:
    """Mel filterbank [n_fft // 2 + 1, n_mels] float32 (transposed for frames @ basis).

    librosa.filters.mel's, computed the way it does (float64 triangles rounded to
    float32, then divided by their float64 norm) for the HTK scale, so that workers need
    not import librosa (~2 CPU-s: numba); other scales ask librosa.
    """
    if config.mel_scale != "htk":
        return _librosa_mel_filterbank(config)
    bin_hz = np.fft.rfftfreq(config.n_fft, d=1.0 / config.sample_rate_hz)
    mel_lo, mel_hi = (2595.0 * np.log10(1.0 + np.float64(hz) / 700.0) for hz in (config.fmin_hz, config.fmax_hz))
    edges_hz = 700.0 * (10.0 ** (np.linspace(mel_lo, mel_hi, config.n_mels + 2) / 2595.0) - 1.0)
    widths = np.diff(edges_hz)
    ramps = np.subtract.outer(edges_hz, bin_hz)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    norms = np.sum(np.abs(weights).astype(np.float64) ** config.mel_norm, axis=1, keepdims=True) ** (1.0 / config.mel_norm)
    basis = (weights / np.where(norms > 0, norms, 1.0)).astype(np.float32)  # an empty band stays 0
    return np.ascontiguousarray(basis.T)


def _librosa_mel_filterbank(config: FeatureConfig) -> np.ndarray:
    import librosa  # imported lazily: it is slow to import

    basis = librosa.filters.mel(
        sr=config.sample_rate_hz,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.fmin_hz,
        fmax=config.fmax_hz,
        htk=False,
        norm=config.mel_norm,
        dtype=np.float32,
    )
    return np.ascontiguousarray(basis.T)


# Bands per group of the mel product: smaller groups skip more zeros, and below ~8 the
# calls' overhead wins (measured: 8 bands 0.6 ms, 96 dense 1.6 ms per 1024 frames).
_BANDS_PER_GROUP = 8


@functools.lru_cache(maxsize=8)
def _mel_groups(config: FeatureConfig) -> tuple[tuple[int, int, int, np.ndarray], ...]:
    """The filterbank as (first band, first bin, bin end, [bins, bands] weights) groups
    of _BANDS_PER_GROUP bands, each over the bins where any of its bands is non-zero."""
    basis = mel_filterbank(config)
    groups = []
    for band in range(0, basis.shape[1], _BANDS_PER_GROUP):
        weights = basis[:, band : band + _BANDS_PER_GROUP]
        bins = np.flatnonzero(np.any(weights != 0, axis=1))
        first, end = (int(bins[0]), int(bins[-1]) + 1) if bins.size else (0, 1)
        groups.append((band, first, end, np.ascontiguousarray(weights[first:end])))
    return tuple(groups)


@functools.lru_cache(maxsize=8)
def _hann(win_samples: int) -> np.ndarray:
    # Periodic ("fftbins") Hann, as scipy.signal.get_window("hann", N) and librosa use.
    n = np.arange(win_samples, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_samples)).astype(np.float32)


def power_spectrogram(
    waveform: np.ndarray, *, config: FeatureConfig = DEFAULT_FEATURE_CONFIG
) -> np.ndarray:
    """|STFT|² [frames, n_fft // 2 + 1] float32 of a mono waveform (centred frames)."""
    waveform = _check_waveform(waveform)
    padded = _reflect_pad(waveform, *_pads(waveform.shape[0], config))
    blocks = _power_blocks(padded, config.n_frames(waveform.shape[0]), config)
    return np.concatenate([block.copy() for block in blocks], axis=0)


def log_mel(waveform: np.ndarray, *, config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> np.ndarray:
    """Log-mel spectrogram of a mono waveform.

    Args:
      waveform: [n_samples] float32 at config.sample_rate_hz (16 kHz); float64 is
        converted; other dtypes, other shapes, empty or non-finite input raise ConfigError.
      config: feature settings (SPEC §1 by default).

    Returns:
      [n_frames, n_mels] float32, time-major, n_frames = 1 + n_samples // hop_samples
      (100 frames per second: a 3 s waveform of 48,000 samples gives 301 frames).
    """
    waveform = _check_waveform(waveform)
    n_frames = config.n_frames(waveform.shape[0])
    pad_left, pad_right = _pads(waveform.shape[0], config)
    return _log_mel_of_padded(_reflect_pad(waveform, pad_left, pad_right), n_frames, config)


class LogMelStream:
    """`log_mel` of a waveform that arrives in chunks, in blocks of frames (multiples of
    _BLOCK_FRAMES, 2.56 s) as soon as the samples they read are in: memory is a few
    blocks, whatever the track's length.

    `push(chunk)` returns the frames the chunk completes ([k, n_mels], k may be 0);
    `finish()` the rest (the right edge's reflect padding needs the end). The blocks
    concatenate to `log_mel(np.concatenate(chunks))` (tests/features/test_streaming.py).
    """

    # Below this many samples the whole waveform is kept and `log_mel` runs at the end:
    # reflect padding of a signal shorter than the pad wraps around (np.pad's rule).
    _MIN_STREAM_SAMPLES = 1 << 14

    def __init__(self, config: FeatureConfig = DEFAULT_FEATURE_CONFIG):
        self._config = config
        self._pad_left = _pads(0, config)[0]
        self._pending: list[np.ndarray] = []  # samples before streaming starts
        self._buffer: np.ndarray | None = None  # padded signal from frame self._next_frame
        self._n_samples = 0
        self._next_frame = 0

    @property
    def n_frames(self) -> int:
        """Frames returned so far."""
        return self._next_frame

    def push(self, chunk: np.ndarray) -> np.ndarray:
        chunk = _check_waveform(chunk) if np.asarray(chunk).size else np.zeros(0, np.float32)
        self._n_samples += chunk.size
        if self._buffer is None:
            self._pending.append(chunk)
            if self._n_samples < self._MIN_STREAM_SAMPLES:
                return self._empty()
            signal = np.concatenate(self._pending)
            self._pending = []
            self._buffer = np.concatenate([signal[1 : self._pad_left + 1][::-1], signal])
        else:
            self._buffer = np.concatenate([self._buffer, chunk])
        # Frame t reads padded samples [t·hop, t·hop + win): complete once they are in,
        # without the right edge's padding.
        hop = self._config.hop_samples
        ready = max((self._buffer.size - self._config.win_samples) // hop + 1, 0)
        # Whole blocks only, on log_mel's block grid: the mel product then sees the same
        # shapes as on the whole array, and the numbers are bit for bit the same.
        return self._emit(self._buffer, ready // _BLOCK_FRAMES * _BLOCK_FRAMES)

    def finish(self) -> np.ndarray:
        """The remaining frames; raises ConfigError when no sample came at all."""
        config = self._config
        if self._buffer is None:
            out = log_mel(np.concatenate(self._pending or [np.zeros(0, np.float32)]), config=config)
            self._next_frame = out.shape[0]
            return out
        pad_right = _pads(self._n_samples, config)[1]
        # The buffer holds the signal's last samples (at least win − hop of them, more
        # than any right pad), so np.pad's reflection of the whole signal is reproduced.
        tail = self._buffer[-pad_right - 1 : -1][::-1]
        padded = np.concatenate([self._buffer, tail])
        return self._emit(padded, config.n_frames(self._n_samples) - self._next_frame)

    def _emit(self, padded: np.ndarray, n_frames: int) -> np.ndarray:
        if n_frames <= 0:
            return self._empty()
        out = _log_mel_of_padded(padded, n_frames, self._config)
        self._next_frame += n_frames
        self._buffer = padded[n_frames * self._config.hop_samples :]
        return out

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self._config.n_mels), np.float32)


def _pads(n_samples: int, config: FeatureConfig) -> tuple[int, int]:
    """Samples of reflect padding (left, right) so centred frame t reads padded samples
    [t·hop, t·hop + win): its window sits exactly where librosa puts it inside n_fft."""
    win, hop, n_fft = config.win_samples, config.hop_samples, config.n_fft
    left = (n_fft - win) // 2 - n_fft // 2
    pad_right = (config.n_frames(n_samples) - 1) * hop + left + win - n_samples
    return -left, max(pad_right, 0)


def _log_mel_of_padded(padded: np.ndarray, n_frames: int, config: FeatureConfig) -> np.ndarray:
    groups = _mel_groups(config)
    out = np.empty((n_frames, config.n_mels), dtype=np.float32)
    start = 0
    for power in _power_blocks(padded, n_frames, config):
        mel = out[start : start + power.shape[0]]
        for band, first, end, weights in groups:
            np.matmul(power[:, first:end], weights, out=mel[:, band : band + weights.shape[1]])
        mel *= np.float32(config.log_gain)
        np.log1p(mel, out=mel)
        mel *= np.float32(1.0 / np.log(10.0))
        start += power.shape[0]
    return out


def _check_waveform(waveform: np.ndarray) -> np.ndarray:
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ConfigError(f"expected a mono waveform [n_samples], got shape {waveform.shape}")
    if waveform.shape[0] == 0:
        raise ConfigError("expected a non-empty waveform, got 0 samples")
    if not np.issubdtype(waveform.dtype, np.floating):
        # Integer PCM has a scale we would have to guess; decode() gives float32.
        raise ConfigError(f"expected a floating-point waveform, got dtype {waveform.dtype}")
    waveform = waveform.astype(np.float32, copy=False)
    if not np.isfinite(waveform).all():
        raise ConfigError(
            f"the waveform holds {np.count_nonzero(~np.isfinite(waveform))} non-finite samples"
        )
    return waveform


def _power_blocks(padded: np.ndarray, n_frames: int, config: FeatureConfig):
    """Yields |STFT|² [frames, n_fft // 2 + 1] of the first n_frames frames of a padded
    signal (see _pads) in blocks of frames; only the window's span of each frame is read.
    The yielded array is reused by the next block."""
    # Imported here, not with the module: importing scipy.fft costs ~0.3 CPU-s, which
    # the processes that only need the filterbank (the jobs' workers, the launchers) skip.
    from scipy import fft as scipy_fft

    win, hop, n_fft = config.win_samples, config.hop_samples, config.n_fft
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n_frames]
    window = _hann(win)
    # The n_fft − win zero columns are written once; each block only refills the window's
    # span. Power is squared in place on the spectrum's float32 view (re, im pairs).
    frame_buffer = np.zeros((min(_BLOCK_FRAMES, n_frames), n_fft), np.float32)
    power = np.empty((frame_buffer.shape[0], n_fft // 2 + 1), np.float32)
    for start in range(0, n_frames, _BLOCK_FRAMES):
        block = frames[start : start + _BLOCK_FRAMES]
        rows = block.shape[0]
        np.multiply(block, window, out=frame_buffer[:rows, :win])
        # scipy's pocketfft keeps float32 (complex64) and is ~3x numpy's rfft here.
        parts = scipy_fft.rfft(frame_buffer[:rows], axis=-1).view(np.float32)
        np.multiply(parts, parts, out=parts)
        np.add(parts[:, 0::2], parts[:, 1::2], out=power[:rows])
        yield power[:rows]


def _reflect_pad(waveform: np.ndarray, left: int, right: int) -> np.ndarray:
    # np.pad's "reflect" is exactly the padding librosa applies (on the n_fft // 2 pad; the
    # samples nearest the edge, which are all a window reaches, are the same).
    return np.pad(waveform, (left, right), mode="reflect")
