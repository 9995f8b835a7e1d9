"""The device front end (TF ops in the graph) against the CPU front end (features/), on CPU.

Reference: features.audio.KaiserBestResampler then features.log_mel.log_mel on the whole
44.1 kHz waveform, windows placed by features.windows.window_starts, embedded by the tf
engine. Tolerances (issue 20): log-mel ≤ 1e-3, embeddings ≤ 1e-4 (float32 on both sides
with other FFT and summation orders; measured maxima are printed).
"""
import numpy as np
import pytest

from musicrep.features.audio import KaiserBestResampler
from musicrep.features.audio_windows import AudioTrackWindower, cut_audio_windows, geometry
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG as CONFIG
from musicrep.features.log_mel import log_mel
from musicrep.features.windows import cut_windows, window_starts
from musicrep.model import SF_NFNET_VARIANTS, engines, save
from musicrep.model.device_frontend import DeviceLogMel, load_audio_embedder

RATE = 44100


def exp_sweep(n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    k = np.log(8000.0 / 20.0) / t[-1]
    return 0.5 * np.sin(2 * np.pi * 20.0 * (np.exp(k * t) - 1) / k)


def harmonic_chord(n: int) -> np.ndarray:
    t = np.arange(n) / RATE
    notes = [440.0 * 2 ** ((m - 69) / 12) for m in (60, 64, 67, 72)]
    out = sum(np.sin(2 * np.pi * f * h * t) / h for f in notes for h in range(1, 6))
    return 0.9 * out / np.abs(out).max()


def parity_signal(name: str, duration_s: float, rng) -> np.ndarray:
    n = int(round(duration_s * RATE))
    if name == "tone":
        signal = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / RATE)
    elif name == "chord":
        signal = harmonic_chord(n)
    elif name == "noise":
        signal = 0.3 * rng.standard_normal(n)
    else:
        signal = exp_sweep(n)
    # The decoder's 16-bit PCM scaled by 1/65536 and summed over two equal channels.
    return (np.round(signal * 32767) / 32768).astype(np.float32)


def cpu_log_mel(x: np.ndarray, max_samples: int | None = None) -> np.ndarray:
    resampler = KaiserBestResampler(RATE, CONFIG.sample_rate_hz)
    y = np.concatenate([resampler.resample_chunk(x), resampler.resample_chunk(np.zeros(0, np.float32), last=True)])
    return log_mel(y[:max_samples])


def device_chunks(x: np.ndarray, *, chunk: int = 37_000, **placement) -> list:
    windower = AudioTrackWindower(config=CONFIG, **placement)
    chunks = []
    for begin in range(0, x.size, chunk):
        chunks += windower.push(x[begin : begin + chunk])
    return chunks + windower.finish()


def device_log_mel_windows(chunks: list) -> tuple[np.ndarray, np.ndarray]:
    """(window starts, log-mel windows [n, 96, w]) computed by the graph."""
    front, g = DeviceLogMel(CONFIG), geometry(CONFIG)
    starts, windows = [], []
    for chunk in chunks:
        audio = cut_audio_windows(chunk.audio, chunk.offsets, g.input_samples(chunk.window_frames))
        windows.append(np.asarray(front.log_mel(audio, chunk.positions, chunk.window_frames)))
        starts.append(chunk.first_frame + chunk.starts)
    return np.concatenate(starts), np.concatenate(windows)


@pytest.mark.parametrize("name", ["tone", "chord", "noise", "sweep"])
@pytest.mark.parametrize("duration_s, placement, max_samples", [
    (9.3, {"window_frames": 300, "hop_frames": 200}, None),  # the last window clamped to the end
    (1.7, {"window_frames": 300, "hop_frames": 200}, None),  # one window of the whole track
    (12.0, {"window_frames": 100, "hop_frames": 100, "max_windows": 5}, None),  # NSynth-like 1 s
    (12.0, {"window_frames": 300, "hop_frames": 200}, 88_000),  # --max-duration-s 5.5: a window reads the end
    (12.0, {"window_frames": 300, "hop_frames": 200}, 6 * 16000 + 77),
])
@pytest.mark.parametrize("chunk", [37_000, 1 << 30])  # windows given out while decoding, or all at the end
def test_log_mel_windows_equal_the_cpu_front_end(name, duration_s, placement, max_samples, chunk, rng):
    x = parity_signal(name, duration_s, rng)
    reference = cpu_log_mel(x, max_samples)
    expected_starts, length = window_starts(reference.shape[0], **placement)
    starts, windows = device_log_mel_windows(device_chunks(x, chunk=chunk, max_samples=max_samples, **placement))
    np.testing.assert_array_equal(starts, expected_starts)  # placed as on the CPU log-mel
    expected = cut_windows(reference, expected_starts, length)
    assert windows.shape == expected.shape
    error = np.abs(windows - expected).max()
    print(f"{name} {duration_s} s {placement} cap {max_samples}: max |Δ log-mel| {error:.2e}")
    assert error <= 1e-3


def test_streaming_keeps_only_what_later_windows_read(rng):
    """A long track is cut as it decodes: every chunk's span is a few windows long and the
    windower's buffer never holds the track."""
    x = parity_signal("noise", 120.0, rng)
    windower = AudioTrackWindower(config=CONFIG, window_frames=300, hop_frames=200, max_chunk_windows=4)
    held = []
    for begin in range(0, x.size, 44_100):
        for chunk in windower.push(x[begin : begin + 44_100]):
            assert chunk.audio.size <= 4 * geometry(CONFIG).input_samples(300)
        held.append(windower._buffer.size)
    assert max(held) < 10 * RATE  # the 120 s track is never held whole
    windower.finish()
    assert windower.n_windows == len(window_starts(cpu_log_mel(x).shape[0], window_frames=300, hop_frames=200)[0])


@pytest.fixture(scope="module")
def tiny_uri(tiny_model, tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("device") / "tiny")
    save(tiny_model, uri, config=SF_NFNET_VARIANTS["tiny"], source="test")
    return uri


@pytest.mark.parametrize("name", ["tone", "chord", "noise", "sweep"])
def test_embeddings_equal_the_cpu_front_end(tiny_uri, name, rng):
    x = parity_signal(name, 9.3, rng)
    reference = cpu_log_mel(x)
    starts, length = window_starts(reference.shape[0], window_frames=300, hop_frames=200)
    expected = engines.load_embedder(tiny_uri, engine="tf", precision="fp32")(cut_windows(reference, starts, length))
    embed = load_audio_embedder(tiny_uri)
    g = geometry(CONFIG)
    actual = np.concatenate([
        embed(cut_audio_windows(c.audio, c.offsets, g.input_samples(c.window_frames)), c.positions, c.window_frames)
        for c in device_chunks(x, window_frames=300, hop_frames=200)
    ])
    assert actual.shape == expected.shape == (len(starts), 224)
    error = np.abs(actual - expected).max()
    print(f"{name}: max |Δ embedding| {error:.2e} (values up to {np.abs(expected).max():.2f})")
    assert error <= 1e-4


def test_the_graph_resampler_is_the_cpu_resampler(rng):
    """The strided convolution gives KaiserBestResampler's 16 kHz samples group by group."""
    x = parity_signal("noise", 2.0, rng)
    g = geometry(CONFIG)
    resampler = KaiserBestResampler(RATE, CONFIG.sample_rate_hz)
    y = np.concatenate([resampler.resample_chunk(x), resampler.resample_chunk(np.zeros(0, np.float32), last=True)])
    n_groups = 50
    first = 3  # groups from 3 on: input from 3·down + lo ≥ 0
    span = x[first * g.down + g.lo : first * g.down + g.lo + (n_groups - 1) * g.down + g.width]
    out = np.asarray(DeviceLogMel(CONFIG).resample(span[None, :]))[0]
    np.testing.assert_allclose(out, y[first * g.up : (first + n_groups) * g.up], atol=2e-6)
