"""Signals and encoded files shared by the feature tests.

Signals are float32 at 16 kHz unless a rate is given; encoded files are written with
soundfile (wav, flac: an encoder independent of FFmpeg) or PyAV (the lossy codecs, through
`musicrep.testing.encode_audio`).
"""
from __future__ import annotations

import io
import shutil
import subprocess
import types

import numpy as np
import pytest
import soundfile

from musicrep.testing import encode_audio

SAMPLE_RATE_HZ = 16000


def sine(freq_hz: float, *, duration_s: float, sample_rate_hz: int = SAMPLE_RATE_HZ,
         amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(duration_s * sample_rate_hz))) / sample_rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def sweep(*, duration_s: float, f_start_hz: float = 20.0, f_end_hz: float = 8000.0,
          sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Exponential sine sweep, amplitude 0.5."""
    t = np.arange(int(round(duration_s * sample_rate_hz))) / sample_rate_hz
    rate = np.log(f_end_hz / f_start_hz) / duration_s
    phase = 2 * np.pi * f_start_hz * (np.exp(rate * t) - 1) / rate
    return (0.5 * np.sin(phase)).astype(np.float32)


def chord(midi_notes=(60, 64, 67, 72), *, duration_s: float,
          sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Sum of sines with 5 harmonics each, peak below 1."""
    t = np.arange(int(round(duration_s * sample_rate_hz))) / sample_rate_hz
    out = np.zeros_like(t)
    for midi in midi_notes:
        f0 = 440.0 * 2 ** ((midi - 69) / 12)
        for harmonic in range(1, 6):
            if f0 * harmonic < sample_rate_hz / 2:
                out += np.sin(2 * np.pi * f0 * harmonic * t) / harmonic
    return (0.9 * out / np.abs(out).max()).astype(np.float32)


def clicks(*, duration_s: float, every_s: float = 0.1237,
           sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Unit impulses, alternating sign, at a period that is not a multiple of the hop."""
    out = np.zeros(int(round(duration_s * sample_rate_hz)), np.float32)
    positions = np.arange(0, out.size, int(every_s * sample_rate_hz))
    out[positions] = np.where(np.arange(positions.size) % 2, -1.0, 1.0)
    return out


def write_soundfile(audio: np.ndarray, *, sample_rate_hz: int, format: str,
                    subtype: str) -> bytes:
    """[channels, samples] float audio → wav/flac bytes written by libsndfile."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio.T, sample_rate_hz, format=format, subtype=subtype)
    return buffer.getvalue()


def encode(audio: np.ndarray, *, sample_rate_hz: int, audio_format: str) -> bytes:
    """[channels, samples] float audio → bytes of a wav (16-bit), flac (16-bit), mp3, ogg,
    opus or m4a file."""
    if audio_format == "wav":
        return write_soundfile(audio, sample_rate_hz=sample_rate_hz, format="WAV", subtype="PCM_16")
    if audio_format == "flac":
        return write_soundfile(audio, sample_rate_hz=sample_rate_hz, format="FLAC", subtype="PCM_16")
    return encode_audio(audio, sample_rate_hz=sample_rate_hz, audio_format=audio_format)


def strip_id3v2(mp3: bytes) -> bytes:
    """The mp3 without its leading ID3v2 tag (header 'ID3', size as 4 × 7-bit bytes)."""
    if mp3[:3] != b"ID3":
        return mp3
    size = 0
    for byte in mp3[6:10]:
        size = (size << 7) | byte
    return mp3[10 + size:]


@pytest.fixture(scope="session")
def signals() -> types.SimpleNamespace:
    """The generators and encoders of this module (conftest is not importable by name)."""
    return types.SimpleNamespace(
        sine=sine, sweep=sweep, chord=chord, clicks=clicks, encode=encode,
        write_soundfile=write_soundfile, strip_id3v2=strip_id3v2,
    )


@pytest.fixture(scope="session")
def speech_16k(tmp_path_factory) -> np.ndarray:
    """A spoken phrase from espeak-ng, decoded to the 16 kHz model waveform."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from musicrep.features import decode

    path = tmp_path_factory.mktemp("speech") / "phrase.wav"
    subprocess.run(
        ["espeak-ng", "-w", str(path), "Supervised and unsupervised learning of audio "
         "representations for music understanding."],
        check=True, capture_output=True,
    )
    return decode(path.read_bytes())


@pytest.fixture(scope="session")
def music_44k_stereo() -> np.ndarray:
    """Three seconds of a synthetic piano piece, [2, samples] float32 at 44.1 kHz, L ≠ R."""
    from musicrep.testing import plan_catalog, render_track
    import dataclasses

    spec = plan_catalog(n_tracks=1, seed=3)[0]
    spec = dataclasses.replace(spec, instrument="piano", sample_rate_hz=44100, channels=2)
    return render_track(spec, duration_s=3.0)
