"""The front end's numbers are pinned: log_mel against a frozen, plainly written copy of
the computation it replaced (float32 window spans at the start of a zeroed 2048-sample
frame, scipy's float32 FFT, dense float32 mel product with librosa's filterbank), within
1e-5 — and against a float64 reference within 1e-4, the float32 arithmetic's own error
(up to ~3.5e-5 on a sweep, in its quietest bins: where in the frame the window sits
changes the float32 FFT's rounding by as much, so the frozen copy keeps that too).

Speed-ups of the front end (docs/front-end.md) must keep both.
"""
import librosa
import numpy as np
import pytest
import scipy.fft

from musicrep.features import log_mel

FROZEN_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-4


def _librosa_basis() -> np.ndarray:
    return librosa.filters.mel(sr=16000, n_fft=2048, n_mels=96, fmin=0.0, fmax=8000.0, htk=True, norm=2.0,
                               dtype=np.float32)


def _frames(waveform: np.ndarray, dtype) -> np.ndarray:
    """[frames, 2048] of the reflect-padded signal, the 400-sample Hann window centred."""
    padded = np.pad(waveform.astype(dtype), 1024, mode="reflect")
    n_frames = 1 + waveform.size // 160
    window = np.zeros(2048, dtype)
    window[824:1224] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    return np.lib.stride_tricks.sliding_window_view(padded, 2048)[::160][:n_frames] * window


def frozen_log_mel(waveform: np.ndarray) -> np.ndarray:
    """The computation as it was before the mel product skipped the filterbank's zeros."""
    centred = _frames(waveform, np.float32)
    frames = np.zeros_like(centred)
    frames[:, :400] = centred[:, 824:1224]  # a circular shift: |STFT|² is the same, its rounding not
    spectrum = scipy.fft.rfft(frames, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = power @ _librosa_basis().T
    return (np.log1p(mel * np.float32(10000)) * np.float32(1 / np.log(10))).astype(np.float32)


def float64_log_mel(waveform: np.ndarray) -> np.ndarray:
    power = np.abs(np.fft.rfft(_frames(waveform, np.float64), axis=-1)) ** 2
    return np.log10(1 + 10000 * power @ _librosa_basis().astype(np.float64).T)


def _signals(rng, s) -> dict:
    return {
        "noise": (0.3 * rng.standard_normal(48000)).astype(np.float32),
        "quiet_noise": (1e-4 * rng.standard_normal(16000)).astype(np.float32),
        "sweep": s.sweep(duration_s=3.0),
        "chord": s.chord(duration_s=2.0),
        "clicks": s.clicks(duration_s=2.0),
        # 2.5 blocks of frames: the band groups across block boundaries.
        "long_noise": (0.1 * rng.standard_normal(160 * 2560)).astype(np.float32),
    }


@pytest.mark.parametrize("name", ["noise", "quiet_noise", "sweep", "chord", "clicks", "long_noise"])
def test_log_mel_equals_the_frozen_computation_and_float64(name, signals, rng):
    waveform = _signals(rng, signals)[name]
    ours = log_mel(waveform)
    assert ours.shape == (1 + waveform.size // 160, 96)
    np.testing.assert_allclose(ours, frozen_log_mel(waveform), rtol=0, atol=FROZEN_TOLERANCE)
    np.testing.assert_allclose(ours, float64_log_mel(waveform), rtol=0, atol=FLOAT64_TOLERANCE)


def test_the_mel_filterbank_is_librosas_bit_for_bit():
    from musicrep.features import mel_filterbank
    from musicrep.contracts.feature_config import FeatureConfig

    for config in (FeatureConfig(), FeatureConfig(n_mels=128, fmin_hz=30.0, fmax_hz=7000.0, n_fft=1024)):
        expected = librosa.filters.mel(sr=16000, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin_hz,
                                       fmax=config.fmax_hz, htk=True, norm=2.0, dtype=np.float32)
        np.testing.assert_array_equal(mel_filterbank(config), expected.T)
