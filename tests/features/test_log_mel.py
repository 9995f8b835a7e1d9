"""log_mel against the librosa call SPEC §1 names as the parity reference.

Tolerance: max |difference| ≤ 1e-3 in log10(1 + 10000·M) units, in float32 (SPEC §1;
both sides compute in float32, the observed differences are ~1e-6).
"""
import warnings

import librosa
import numpy as np
import pytest

from musicrep.errors import ConfigError
from musicrep.features import DEFAULT_FEATURE_CONFIG, log_mel, power_spectrogram

TOLERANCE = 1e-3


def reference_log_mel(waveform: np.ndarray) -> np.ndarray:
    """SPEC §1's parity reference, transposed to our [frames, 96] layout."""
    mel = librosa.feature.melspectrogram(
        y=waveform, sr=16000, n_fft=2048, win_length=400, hop_length=160, window="hann",
        center=True, pad_mode="reflect", power=2.0, n_mels=96, fmin=0.0, fmax=8000.0,
        htk=True, norm=2.0)
    return np.log10(1 + 10000 * mel).T


def assert_parity(waveform: np.ndarray) -> None:
    ours = log_mel(waveform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # librosa: n_fft too large for short input
        expected = reference_log_mel(waveform)
    assert ours.shape == expected.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE)


SIGNALS = {
    "noise": lambda s, rng: (0.3 * rng.standard_normal(3 * 16000)).astype(np.float32),
    "quiet_noise": lambda s, rng: (1e-4 * rng.standard_normal(16000)).astype(np.float32),
    "full_scale_noise": lambda s, rng: np.clip(rng.standard_normal(16000), -1, 1).astype(np.float32),
    "sine_sweep": lambda s, rng: s.sweep(duration_s=3.0),
    "sine_1k": lambda s, rng: s.sine(1000.0, duration_s=1.0),
    "chord": lambda s, rng: s.chord(duration_s=2.0),
    "clicks": lambda s, rng: s.clicks(duration_s=2.0),
    "silence": lambda s, rng: np.zeros(16000, np.float32),
}


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_matches_librosa(name, signals, rng):
    assert_parity(SIGNALS[name](signals, rng))


@pytest.mark.parametrize("n_samples", [1, 2, 50, 199, 200, 201, 300, 399, 400, 401, 1023, 1025, 2049])
def test_matches_librosa_on_very_short_signals(n_samples, rng):
    assert_parity((0.3 * rng.standard_normal(n_samples)).astype(np.float32))


def test_matches_librosa_on_speech(speech_16k):
    assert speech_16k.size > 16000  # a phrase, not an empty file
    assert_parity(speech_16k)


@pytest.mark.parametrize("n_samples", [1, 159, 160, 161, 16000, 48000, 48159, 48160])
def test_frame_count_is_one_plus_samples_over_hop(n_samples):
    frames = log_mel(np.zeros(n_samples, np.float32)).shape[0]
    assert frames == 1 + n_samples // 160 == DEFAULT_FEATURE_CONFIG.n_frames(n_samples)


def test_three_seconds_give_301_frames_of_96_bands(rng):
    out = log_mel(rng.standard_normal(48000).astype(np.float32))
    assert out.shape == (301, 96)
    assert out.dtype == np.float32 and out.flags.c_contiguous


def test_float64_input_gives_the_float32_result(rng):
    waveform = rng.standard_normal(8000)
    np.testing.assert_array_equal(log_mel(waveform), log_mel(waveform.astype(np.float32)))


def test_long_input_crosses_block_boundaries(rng):
    # More frames than one processing block (256): blocks must join seamlessly.
    waveform = (0.1 * rng.standard_normal(2500 * 160)).astype(np.float32)
    assert_parity(waveform)


def test_power_spectrogram_is_librosa_stft_power(rng):
    waveform = rng.standard_normal(16000).astype(np.float32)
    expected = np.abs(librosa.stft(
        waveform, n_fft=2048, hop_length=160, win_length=400, window="hann", center=True,
        pad_mode="reflect")) ** 2
    np.testing.assert_allclose(power_spectrogram(waveform), expected.T, rtol=1e-4, atol=1e-3)


def test_silence_is_zero():
    assert not log_mel(np.zeros(4000, np.float32)).any()


def test_batch_input_is_refused():
    with pytest.raises(ConfigError, match=r"mono waveform \[n_samples\], got shape \(2, 1600\)"):
        log_mel(np.zeros((2, 1600), np.float32))


def test_scalar_input_is_refused():
    with pytest.raises(ConfigError, match=r"got shape \(\)"):
        log_mel(np.float32(0.5))


def test_empty_input_is_refused():
    with pytest.raises(ConfigError, match="non-empty waveform, got 0 samples"):
        log_mel(np.zeros(0, np.float32))


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.complex64, np.bool_])
def test_non_float_input_is_refused(dtype):
    with pytest.raises(ConfigError, match=f"floating-point waveform, got dtype {np.dtype(dtype)}"):
        log_mel(np.zeros(1600, dtype))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    waveform = np.zeros(1600, np.float32)
    waveform[800] = bad
    with pytest.raises(ConfigError, match="non-finite"):
        log_mel(waveform)
