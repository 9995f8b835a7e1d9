"""Audio windows for the device front end (`--log-mel-on device`): the decoded waveform at
decode_rate_hz (44.1 kHz, channels summed, as features/audio.py makes it before its
resampler), cut into one span of input samples per embedding window, so that the model's
graph resamples, frames and takes the log-mel itself (musicrep.model.device_frontend).

Pure numpy. The geometry is exact: a window of W log-mel frames starting at frame s reads
the 16 kHz samples [s·hop − pad, (s + W − 1)·hop − pad + win) (pad = the centring's
reflect padding, 200), reflected at the track's ends. The graph computes the 16 kHz
samples of G whole resampler groups from g0 on (group g: `up` outputs from the input
samples [g·down + lo, g·down + lo + width), KaiserBestResampler's polyphase layout), then
gathers the reflected positions from them. `AudioWindowGeometry` holds these numbers;
`AudioTrackWindower` places windows as the CPU path does (WindowStream) and cuts the
input spans as the decoded samples arrive, keeping only what later windows may read.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import BinaryIO, Iterator

import numpy as np

from musicrep.errors import ConfigError
from musicrep.features import audio
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.features.windows import WindowStream

# Column order of the per-window int32 positions the graph takes.
SEGMENT_START, FIRST_SAMPLE, N_SAMPLES = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class AudioWindowGeometry:
    """Sizes of the device front end's input, in samples (input: decode_rate_hz; output:
    sample_rate_hz). `taps` [width, up] float32 is KaiserBestResampler's filter."""

    up: int
    down: int
    lo: int
    width: int
    hop: int
    win: int
    pad: int
    taps: np.ndarray = dataclasses.field(repr=False, compare=False)

    def groups(self, window_frames: int) -> int:
        """Resampler groups a window of `window_frames` frames reads (one spare for the
        misalignment of its first sample with a group boundary)."""
        return -(-((window_frames - 1) * self.hop + self.win) // self.up) + 1

    def input_samples(self, window_frames: int) -> int:
        """Input samples per window: the span of its groups' filters."""
        return (self.groups(window_frames) - 1) * self.down + self.width

    def first_group(self, start_frame: np.ndarray | int) -> np.ndarray:
        """The group holding the first 16 kHz sample a window starting at `start_frame` reads."""
        return np.maximum(np.asarray(start_frame, np.int64) * self.hop - self.pad, 0) // self.up

    def input_start(self, start_frame: np.ndarray | int) -> np.ndarray:
        """Input sample index where the span of a window starting at `start_frame` begins
        (negative near the start: those samples are 0)."""
        return self.first_group(start_frame) * self.down + self.lo

    def output_length(self, n_input: int) -> int:
        """16 kHz samples of n_input decoded samples: ceil(n · up / down) (librosa's length)."""
        return -(-n_input * self.up // self.down)

    def ready_groups(self, n_input: int) -> int:
        """Groups whose filter lies inside the first n_input input samples."""
        return max((n_input - self.lo - self.width) // self.down + 1, 0)


@functools.lru_cache(maxsize=4)
def geometry(config: FeatureConfig = DEFAULT_FEATURE_CONFIG) -> AudioWindowGeometry:
    """The geometry of `config` (resampler "kaiser_best" only: its filter is the one the graph runs)."""
    if config.resampler != "kaiser_best":
        raise ConfigError(f"the device front end implements the kaiser_best resampler, the model's front end uses {config.resampler!r}")
    # The CPU resampler's own filter and layout, so both front ends apply one filter.
    up, down, lo, width, taps = audio.KaiserBestResampler(config.decode_rate_hz, config.sample_rate_hz).layout()
    return AudioWindowGeometry(
        up=up,
        down=down,
        lo=lo,
        width=width,
        hop=config.hop_samples,
        win=config.win_samples,
        pad=(config.n_fft // 2) - (config.n_fft - config.win_samples) // 2,
        taps=np.array(taps, np.float32),
    )


class TrackInput:
    """Iterating gives a track's decoded input chunks (decode_rate_hz), up to what the
    first `max_samples` output samples need; then `n_samples` and `duration_s` are the
    16 kHz waveform's, as TrackLogMel's are."""

    def __init__(
        self,
        source: bytes | BinaryIO,
        *,
        config: FeatureConfig = DEFAULT_FEATURE_CONFIG,
        max_samples: int | None = None,
    ):
        self._source, self._config = source, config
        self._geometry = geometry(config)
        self._max_samples = max_samples
        self.n_input = 0

    @property
    def n_samples(self) -> int:
        n = self._geometry.output_length(self.n_input)
        return n if self._max_samples is None else min(n, self._max_samples)

    @property
    def duration_s(self) -> float:
        return self.n_samples / self._config.sample_rate_hz

    def __iter__(self) -> Iterator[np.ndarray]:
        g = self._geometry
        # Input that the groups of the capped waveform's last windows read; later samples
        # only reach outputs past the cap, which no window reads.
        enough = None if self._max_samples is None else (-(-self._max_samples // g.up) + 1) * g.down + g.lo + g.width
        for chunk in audio.decode_chunks(self._source, config=self._config, resample=False):
            if enough is not None:
                chunk = chunk[: max(enough - self.n_input, 0)]
            self.n_input += chunk.size
            if chunk.size:
                yield chunk
            if enough is not None and self.n_input >= enough:
                break  # closes the decoder: the rest of the file is never read


@dataclasses.dataclass(frozen=True)
class AudioWindowChunk:
    """Consecutive windows of one track as the graph takes them: `audio` holds their input
    span from input sample `audio_start`; window i reads audio[offsets[i] :
    offsets[i] + input_samples] and `positions[i]` (SEGMENT_START, FIRST_SAMPLE,
    N_SAMPLES: 16 kHz index of its first group, of its first padded sample, and the
    track's 16 kHz length, or a bound past every sample it reads while the track is still
    decoding). `starts` are frames relative to `first_frame`, as in WindowChunk."""

    first_frame: int
    starts: np.ndarray
    window_frames: int
    audio: np.ndarray
    offsets: np.ndarray
    positions: np.ndarray


class AudioTrackWindower:
    """Decoded input chunks of one track → AudioWindowChunks, windows placed exactly as
    the CPU path places them on the log-mel (WindowStream, fed frame counts), each window
    given out once every input sample its groups read has arrived."""

    def __init__(
        self,
        *,
        config: FeatureConfig,
        window_frames: int,
        hop_frames: int,
        max_windows: int | None = None,
        min_frames: int = 1,
        max_samples: int | None = None,
        max_chunk_windows: int = 128,
    ):
        self._config, self._g = config, geometry(config)
        self._w, self._hop_frames = window_frames, hop_frames
        self._max_windows = max_windows
        self._stream = WindowStream(
            window_frames=window_frames,
            hop_frames=hop_frames,
            max_windows=max_windows,
            min_frames=min_frames,
            max_chunk_windows=max_chunk_windows,
        )
        self._max_frames = None if max_samples is None else config.n_frames(max_samples)
        self._max_samples = max_samples
        self._buffer = np.zeros(0, np.float32)
        self._buffer_start = 0  # input index of self._buffer[0]
        self._n_input = 0
        self._frames_fed = 0

    @property
    def n_windows(self) -> int:
        return self._stream.n_windows

    @property
    def window_frames(self) -> int:
        return self._stream.window_frames

    @property
    def n_frames(self) -> int:
        """Frames placed so far (after `finish`: the track's, as its log-mel would have)."""
        return self._frames_fed

    def push(self, chunk: np.ndarray) -> list[AudioWindowChunk]:
        self._buffer = np.concatenate([self._buffer, np.asarray(chunk, np.float32)])
        self._n_input += chunk.size
        g = self._g
        # The last start s whose groups [first_group(s), + G) are all ready; a window ending
        # at frame s + W − 1 is then complete. Frames fed stay below the track's real count.
        last_group = g.ready_groups(self._n_input) - g.groups(self._w)
        if last_group < 0:
            return []
        last_start = ((last_group + 1) * g.up - 1 + g.pad) // g.hop
        frames = last_start + self._w
        if self._max_frames is not None:
            frames = min(frames, self._max_frames)
        # Past every sample these windows read, or the cap: the track's end for them.
        bound = g.ready_groups(self._n_input) * g.up
        if self._max_samples is not None:
            bound = min(bound, self._max_samples)
        return self._cut(self._feed(frames), bound, final=False)

    def finish(self) -> list[AudioWindowChunk]:
        """The remaining windows. Raises TooShortError (too few frames for the network)."""
        n_samples = self._g.output_length(self._n_input)
        if self._max_samples is not None:
            n_samples = min(n_samples, self._max_samples)
        if n_samples <= self._g.pad:
            # Reflect padding longer than the signal wraps (np.pad's rule); no network
            # takes so few frames (a track of < 12.5 ms), so refuse it here.
            raise ConfigError(f"the device front end needs more than {self._g.pad} samples, the track has {n_samples}")
        self._feed(self._config.n_frames(n_samples))
        return self._cut(self._stream.finish(), n_samples, final=True)

    def _feed(self, frames: int) -> list:
        if frames <= self._frames_fed:
            return []
        # Placement needs only frame counts: [k, 0] placeholder blocks.
        placed = self._stream.push(np.zeros((frames - self._frames_fed, 0), np.float32))
        self._frames_fed = frames
        return placed

    def _cut(self, chunks: list, n_bound: int, *, final: bool) -> list[AudioWindowChunk]:
        g = self._g
        out = []
        for chunk in chunks:
            w = chunk.window_frames
            starts = chunk.first_frame + chunk.starts
            input_starts = g.input_start(starts)
            span_lo, span_hi = int(input_starts[0]), int(input_starts[-1]) + g.input_samples(w)
            positions = np.stack(
                [g.first_group(starts) * g.up, starts * g.hop - g.pad, np.full(starts.shape, n_bound)], axis=1
            ).astype(np.int32)
            out.append(
                AudioWindowChunk(
                    first_frame=chunk.first_frame,
                    starts=chunk.starts,
                    window_frames=w,
                    audio=self._span(span_lo, span_hi),
                    offsets=(input_starts - span_lo).astype(np.int64),
                    positions=positions,
                )
            )
        if not final:
            self._trim()
        return out

    def _span(self, lo: int, hi: int) -> np.ndarray:
        """Input samples [lo, hi), 0 outside the signal."""
        span = np.zeros(hi - lo, np.float32)
        a, b = max(lo, self._buffer_start), min(hi, self._buffer_start + self._buffer.size)
        if b > a:
            span[a - lo : b - lo] = self._buffer[a - self._buffer_start : b - self._buffer_start]
        return span

    def _trim(self) -> None:
        # Keep what the next window may read: the next unclamped one, or one clamped to
        # the end (which starts at least W frames before the frames fed so far).
        done = self._max_windows is not None and self.n_windows >= self._max_windows
        if done:
            keep_from = self._buffer_start + self._buffer.size
        else:
            next_start = max((self.n_windows + 1) * self._hop_frames - self._w // 2, 0)
            keep_frame = max(min(next_start, self._frames_fed - self._w), 0)
            keep_from = int(self._g.input_start(keep_frame))
        drop = min(max(keep_from - self._buffer_start, 0), self._buffer.size)
        if drop:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop


def cut_audio_windows(
    chunk_audio: np.ndarray, offsets: np.ndarray, input_samples: int, out: np.ndarray | None = None
) -> np.ndarray:
    """[n_windows, input_samples] float32: the windows of one chunk's span (one copy),
    into `out` when given (that shape)."""
    if out is None:
        out = np.empty((len(offsets), input_samples), np.float32)
    for window, offset in zip(out, offsets):
        window[...] = chunk_audio[offset : offset + input_samples]
    return out

