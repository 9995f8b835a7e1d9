"""decode(): every codec and layout FFmpeg reads → the reference's float32 mono 16 kHz.

Levels follow SPEC §1: a 16-bit sample s becomes s / 65536 and channels are summed, so a
sine of amplitude a (in [-1, 1] file units) decodes to amplitude a / 2 from a mono file
and a from a stereo file with L = R. Lossless files are checked to float precision
against an independent computation (soundfile's 16-bit samples, the same resampler);
lossy codecs to 10 % of level (the halving or doubling checked is 50 %) and a few codec frames of length.
"""
import io
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile

from musicrep.errors import AudioDecodeError
from musicrep.features import FeatureConfig, decode
from musicrep.features.audio import KaiserBestResampler

# Extra samples (at 16 kHz) a codec may add or drop: encoder priming/padding that the
# container does not tell FFmpeg to trim (AAC in mp4 without an edit list: 1024 + up to
# 1023 samples at 44.1 kHz ≈ 750 at 16 kHz; Vorbis from FFmpeg's encoder: a few ms).
LENGTH_SLACK = {"wav": 2, "flac": 2, "mp3": 2, "opus": 2, "ogg": 400, "m4a": 800}

CASES = [
    ("wav", 22050, 1), ("wav", 44100, 2), ("wav", 48000, 1),
    ("flac", 44100, 1), ("flac", 48000, 2),
    ("mp3", 22050, 2), ("mp3", 44100, 1), ("mp3", 48000, 2),
    ("ogg", 44100, 2), ("ogg", 48000, 2),
    ("opus", 48000, 1), ("opus", 48000, 2),
    ("m4a", 44100, 1), ("m4a", 48000, 2),
]


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize("audio_format, rate_hz, channels", CASES)
def test_level_and_length_follow_the_reference(audio_format, rate_hz, channels, signals):
    duration_s, amplitude = 2.0, 0.5
    tone = signals.sine(1000.0, duration_s=duration_s, sample_rate_hz=rate_hz, amplitude=amplitude)
    data = signals.encode(np.tile(tone, (channels, 1)), sample_rate_hz=rate_hz, audio_format=audio_format)

    waveform = decode(data)

    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert abs(waveform.size - duration_s * 16000) <= LENGTH_SLACK[audio_format]
    expected_rms = amplitude * channels / 2 / np.sqrt(2)
    interior = waveform[4000:-4000]  # away from codec onsets and the tail transient
    lossless = audio_format in ("wav", "flac")
    assert rms(interior) == pytest.approx(expected_rms, rel=1e-3 if lossless else 0.1)


@pytest.mark.parametrize("rate_hz", [22050, 44100, 48000])
def test_lossless_decode_is_pcm16_over_65536_summed_then_resampled(rate_hz, signals, rng):
    # L ≠ R: the sum, not the mean, is what the reference takes.
    audio = (0.3 * rng.standard_normal((2, rate_hz))).clip(-1, 1).astype(np.float32)
    data = signals.write_soundfile(audio, sample_rate_hz=rate_hz, format="WAV", subtype="PCM_16")
    pcm, _ = soundfile.read(io.BytesIO(data), dtype="int16")

    waveform = decode(data, config=FeatureConfig(decode_rate_hz=rate_hz))

    mono = (pcm.astype(np.float32) / 65536).sum(axis=1)
    resampler = KaiserBestResampler(rate_hz, 16000)
    expected = np.concatenate([resampler.resample_chunk(mono), resampler.resample_chunk(np.zeros(0), last=True)])
    np.testing.assert_allclose(waveform, expected, rtol=0, atol=1e-6)


def test_streamed_resampler_equals_one_shot(rng):
    x = rng.standard_normal(100_003).astype(np.float32)
    one_shot = KaiserBestResampler(44100, 16000).resample_chunk(x, last=True)
    streamed = KaiserBestResampler(44100, 16000)
    pieces = [streamed.resample_chunk(chunk) for chunk in np.array_split(x, [1, 5000, 5001, 70000])]
    pieces.append(streamed.resample_chunk(np.zeros(0, np.float32), last=True))
    assert one_shot.size == -(-x.size * 16000 // 44100)
    np.testing.assert_allclose(np.concatenate(pieces), one_shot, rtol=0, atol=1e-6)


def test_resampler_passes_the_band_and_stops_aliases(signals):
    # resampy kaiser_best: flat to ~7 kHz, -6 dB at 7.34 kHz, nothing above 8 kHz survives.
    def gain(freq_hz):
        resampler = KaiserBestResampler(44100, 16000)
        out = resampler.resample_chunk(signals.sine(freq_hz, duration_s=1.0, sample_rate_hz=44100), last=True)
        return rms(out[2000:-2000]) / (0.5 / np.sqrt(2))

    assert gain(1000.0) == pytest.approx(1.0, abs=1e-3)
    assert gain(6500.0) == pytest.approx(1.0, abs=1e-3)
    assert gain(7340.0) == pytest.approx(0.5, abs=0.05)
    assert gain(9000.0) < 1e-4  # would alias to 7 kHz


def test_soxr_resampler_is_available(signals):
    tone = signals.sine(1000.0, duration_s=1.0, sample_rate_hz=44100)
    data = signals.encode(tone[None], sample_rate_hz=44100, audio_format="wav")
    ours = decode(data, config=FeatureConfig(resampler="soxr_hq"))
    assert ours.size == 16000
    assert rms(ours[2000:-2000]) == pytest.approx(0.25 / np.sqrt(2), rel=1e-3)


def test_eight_channels_at_96_khz_are_summed(signals):
    amplitudes = np.linspace(0.05, 0.12, 8)
    tone = signals.sine(440.0, duration_s=1.0, sample_rate_hz=96000, amplitude=1.0)
    audio = amplitudes[:, None] * tone[None]
    data = signals.write_soundfile(audio.astype(np.float32), sample_rate_hz=96000, format="WAV", subtype="PCM_16")

    waveform = decode(data)

    assert waveform.size == 16000
    assert rms(waveform[2000:-2000]) == pytest.approx(amplitudes.sum() / 2 / np.sqrt(2), rel=1e-3)


def test_file_object_and_bytes_agree(signals, tmp_path):
    tone = signals.sine(440.0, duration_s=1.0, sample_rate_hz=44100)
    path = tmp_path / "tone with spaces é.flac"
    path.write_bytes(signals.encode(np.stack([tone, -tone]), sample_rate_hz=44100, audio_format="flac"))
    with open(path, "rb") as f:
        from_file = decode(f)
    np.testing.assert_array_equal(from_file, decode(path.read_bytes()))
    assert not from_file.any()  # L = −R sums to digital silence


def test_digital_silence_decodes_to_zeros(signals):
    data = signals.encode(np.zeros((2, 44100), np.float32), sample_rate_hz=44100, audio_format="wav")
    waveform = decode(data)
    assert waveform.size == 16000 and not waveform.any()


def test_a_short_clip_of_0_2_s_decodes(signals):
    tone = signals.sine(440.0, duration_s=0.2, sample_rate_hz=44100)
    waveform = decode(signals.encode(tone[None], sample_rate_hz=44100, audio_format="mp3"))
    assert waveform.size == 3200


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_wav_with_non_finite_samples_is_refused(bad, signals):
    audio = np.zeros((1, 44100), np.float32)
    audio[0, 1000] = bad
    data = signals.write_soundfile(audio, sample_rate_hz=44100, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=r"non-finite \(NaN or inf\)"):
        decode(data)


def test_zero_bytes_are_refused():
    with pytest.raises(AudioDecodeError, match="empty input: 0 bytes"):
        decode(b"")


def test_text_named_mp3_is_refused():
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        decode(b"This is a text file someone named song.mp3.\n" * 50)


def test_a_header_only_mp3_is_refused(signals):
    tone = signals.sine(440.0, duration_s=1.0, sample_rate_hz=44100)
    mp3 = signals.encode(tone[None], sample_rate_hz=44100, audio_format="mp3")
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        decode(mp3[:300])


def test_truncated_mp3_decodes_what_is_there(signals):
    # Cut at 60 % of the bytes, mid-frame: FFmpeg decodes up to the cut (as the ffmpeg
    # program does), so the waveform is shorter, not an error.
    tone = signals.sine(440.0, duration_s=3.0, sample_rate_hz=44100)
    mp3 = signals.encode(np.tile(tone, (2, 1)), sample_rate_hz=44100, audio_format="mp3")
    waveform = decode(mp3[: int(len(mp3) * 0.6)])
    assert 0.5 * 48000 < waveform.size < 0.65 * 48000


def test_corrupt_packets_are_skipped_like_the_ffmpeg_program(signals, caplog):
    # Two mp3 files back to back: the second's ID3 tag is garbage in the middle of the
    # stream. The ffmpeg program reports "Invalid data" and carries on; so do we, loudly.
    tone = signals.sine(440.0, duration_s=1.0, sample_rate_hz=44100)
    mp3 = signals.encode(np.tile(tone, (2, 1)), sample_rate_hz=44100, audio_format="mp3")
    with caplog.at_level(logging.WARNING, logger="musicrep.features.audio"):
        waveform = decode(mp3 + mp3)
    assert waveform.size > 1.9 * 16000
    assert "packets that did not decode" in caplog.text


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from musicrep.features import decode

    def rss_bytes():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def peak_rss_bytes():
        # VmHWM, not ru_maxrss: the latter survives fork + exec, so a child of a large
        # pytest process would report the parent's peak.
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024

    path = sys.argv[1]
    with open(path, "rb") as f:
        decode(f.read(200_000))  # warm up on 25 s: imports, filter tables, codec libraries
    before = rss_bytes()
    with open(path, "rb") as f:
        waveform = decode(f)
    peak = peak_rss_bytes()
    print(waveform.nbytes, max(peak - before, 0), waveform.size)
    print("ratio", max(peak - before, 0) / waveform.nbytes, file=sys.stderr)
""")


@pytest.mark.slow
def test_sixty_minute_track_needs_about_twice_its_decoded_size(signals, tmp_path):
    """Peak extra memory of decoding a 60-minute mp3 ≤ 2.5 × the float32 16 kHz output
    (230 MB) + 64 MB. Measured: ~2 × output (the chunks and their concatenation);
    20-80 s on 2 busy cores, hence slow."""
    rate = 44100
    ten_s = signals.chord(duration_s=10.0, sample_rate_hz=rate)
    mp3 = signals.strip_id3v2(signals.encode(ten_s[None], sample_rate_hz=rate, audio_format="mp3"))
    path = tmp_path / "sixty_minutes.mp3"
    path.write_bytes(mp3 * 360)  # frames repeat; the Xing frame in each copy is 26 ms of silence

    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(path)],
        capture_output=True, text=True, check=True, timeout=600,
    )
    output_bytes, extra_bytes, n_samples = map(int, result.stdout.split())

    assert n_samples == pytest.approx(3600 * 16000, rel=0.01)
    assert extra_bytes <= 2.5 * output_bytes + 64 * 2**20, (extra_bytes, output_bytes)
