"""The streaming path (decode_chunks → LogMelStream → WindowStream → OnlinePool) against
the whole-array path it replaces in the jobs (decode → log_mel → window_starts →
cut_windows → WindowSpec.pool): same numbers, whatever the chunking."""

import os

import numpy as np
import pytest

from musicrep.errors import AudioDecodeError, TooShortError
from musicrep.features import decode, log_mel
from musicrep.features.audio import decode_chunks
from musicrep.features.log_mel import LogMelStream
from musicrep.features.segments import Segmenter, SegmentSpill
from musicrep.features.stream import TrackLogMel
from musicrep.contracts.window_spec import WindowSpec
from musicrep.features.windows import OnlinePool, WindowStream, cut_windows, window_starts


def _pieces(array: np.ndarray, rng, most: int):
    """`array` cut at random points into pieces of 1 … most items."""
    start = 0
    while start < array.shape[0]:
        size = int(rng.integers(1, most + 1))
        yield array[start : start + size]
        start += size


@pytest.mark.parametrize("n_samples", [1, 150, 16383, 16384, 16545, 100_003, 480_000])
def test_log_mel_stream_equals_the_whole_array_log_mel(rng, n_samples):
    waveform = (0.3 * rng.standard_normal(n_samples)).astype(np.float32)
    stream = LogMelStream()
    blocks = [stream.push(piece) for piece in _pieces(waveform, rng, 40_000)] + [stream.finish()]
    got = np.concatenate(blocks)
    want = log_mel(waveform)
    assert got.shape == want.shape == (1 + n_samples // 160, 96)
    np.testing.assert_array_equal(got, want)


def test_track_log_mel_of_an_encoded_file_equals_decode_then_log_mel(signals):
    audio = signals.chord(duration_s=47.0, sample_rate_hz=44100)
    flac = signals.encode(np.stack([audio, 0.5 * audio]), sample_rate_hz=44100, audio_format="flac")
    chunks = list(decode_chunks(flac))
    assert len(chunks) > 3 and all(chunk.size for chunk in chunks)
    waveform = decode(flac)
    np.testing.assert_array_equal(np.concatenate(chunks), waveform)
    blocks = TrackLogMel(flac)
    got = np.concatenate(list(blocks))
    np.testing.assert_array_equal(got, log_mel(waveform))
    assert blocks.n_samples == waveform.size and blocks.duration_s == pytest.approx(47.0, abs=1e-3)
    # max_samples: the log-mel of the first samples, the rest never decoded.
    capped = TrackLogMel(flac, max_samples=160_000)
    np.testing.assert_array_equal(np.concatenate(list(capped)), log_mel(waveform[:160_000]))
    assert capped.n_samples == 160_000


def test_track_log_mel_raises_decode_errors():
    with pytest.raises(AudioDecodeError, match="not a readable audio file"):
        list(TrackLogMel(b"not audio at all" * 100))


@pytest.mark.parametrize("n_frames", [1, 9, 10, 150, 299, 300, 301, 499, 500, 601, 1234, 30_001])
@pytest.mark.parametrize("max_windows", [None, 1, 4, 300])
def test_window_stream_places_and_cuts_as_window_starts(rng, n_frames, max_windows):
    log = rng.random((n_frames, 5), dtype=np.float32)
    settings = dict(window_frames=300, hop_frames=200, max_windows=max_windows, min_frames=10)
    stream = WindowStream(**settings, max_chunk_windows=7)
    if n_frames < 10:
        with pytest.raises(TooShortError):
            for piece in _pieces(log, rng, 900):
                stream.push(piece)
            stream.finish()
        return
    chunks = [c for piece in _pieces(log, rng, 900) for c in stream.push(piece)] + stream.finish()
    starts, length = window_starts(n_frames, **settings)
    assert np.concatenate([c.first_frame + c.starts for c in chunks]).tolist() == starts.tolist()
    assert all(c.starts.size <= 7 and c.window_frames == length for c in chunks)
    got = np.concatenate([cut_windows(c.log_mel, c.starts, c.window_frames) for c in chunks])
    np.testing.assert_array_equal(got, cut_windows(log, starts, length))
    assert stream.n_windows == starts.size


def test_window_stream_keeps_only_a_chunk_of_frames(rng):
    stream = WindowStream(window_frames=300, hop_frames=200, max_chunk_windows=16)
    block = rng.random((1000, 96), dtype=np.float32)
    for _ in range(400):  # 400,000 frames: 67 minutes
        stream.push(block)
        held = sum(b.shape[0] for b in stream._blocks)
        assert held <= 1000 + 16 * 200 + 300


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_online_pool_equals_pool_of_all_windows(rng, aggregate):
    windows = (3 * rng.standard_normal((1801, 1728))).astype(np.float32)
    spec = WindowSpec(aggregate=aggregate)
    parts = [OnlinePool(aggregate, 1728).add(piece) for piece in _pieces(windows, rng, 128)]
    merged = parts[0]
    for part in reversed(parts[1:]):  # any order
        merged.merge(part)
    assert merged.count == 1801
    np.testing.assert_allclose(merged.result(), spec.pool(windows), rtol=0, atol=1e-6)


def test_segmenter_cuts_fixed_segments_and_keeps_a_final_one(rng):
    log = rng.random((1000, 3), dtype=np.float32)
    segmenter = Segmenter(256)
    segments = [s for piece in _pieces(log, rng, 300) for s in segmenter.push(piece)]
    segments.append(segmenter.finish())
    assert [offset for offset, _ in segments] == [0, 256, 512, 768]
    assert [frames.shape[0] for _, frames in segments] == [256, 256, 256, 232]
    np.testing.assert_array_equal(np.concatenate([frames for _, frames in segments]), log)
    exact = Segmenter(500)
    assert [o for o, _ in exact.push(log)] == [0] and exact.finish()[0] == 500  # never an empty final


def test_segment_spill_gives_back_the_segments_it_holds_in_order(rng, tmp_path):
    segments = [(offset, rng.random((n, 96), dtype=np.float32)) for offset, n in ((0, 700), (700, 700), (1400, 3))]
    with SegmentSpill(str(tmp_path)) as spill:
        assert list(spill) == []
        for offset, frames in segments:
            spill.add(offset, frames)
        assert os.listdir(tmp_path) == []  # unnamed: nothing to clean up after a crash
        for _ in range(2):  # readable again
            back = list(spill)
            assert [offset for offset, _ in back] == [0, 700, 1400]
            for (_, want), (_, got) in zip(segments, back):
                assert got.dtype == np.float32 and got.flags.writeable
                np.testing.assert_array_equal(got, want)
    assert list(spill) == []
