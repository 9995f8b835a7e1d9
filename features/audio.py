"""Decode any audio FFmpeg reads into the reference's 16 kHz mono waveform (SPEC §1).

The reference front end pipes every file through `ffmpeg -acodec pcm_s16le -ar 44100`,
scales each 16-bit sample by 1/65536 (so one channel spans [-0.5, 0.5)), sums the
channels, then resamples to 16 kHz. We do the same with PyAV (FFmpeg's libraries, so the
first conversion is FFmpeg's own swresample) and resample 44.1 → 16 kHz, streamed so a
long track is never held at 44.1 kHz, with one of (FeatureConfig.resampler):

- "kaiser_best" (default): the filter of the reference's resampler (librosa 0.9's default,
  resampy's `kaiser_best`: a windowed sinc with 50 zero crossings each side, Kaiser window
  β = 12.9846, cutoff at 0.9173 of the output Nyquist, so -6 dB at 7.34 kHz), evaluated
  exactly and applied as a polyphase matrix product. It matches the reference's 16 kHz
  waveform to ~3e-5 and its log-mel to ~1e-3 in every band.
- "soxr_hq": libsoxr's HQ resampler, ~2x faster, flat to 7.3 kHz and cut only near 8 kHz:
  its top five mel bands (7.2-8 kHz) differ from the reference's by up to ~2 log10 units
  on broadband audio, enough to move embeddings.

Differences from the reference, all documented in tests/features/test_oracle_frontend.py:
we do not cut tracks at 30 minutes; the ffmpeg program reading an mp3 from a pipe keeps
the encoder's end padding (a few ms more samples) where FFmpeg's libraries trim it; the
reference's resampler leaves its last sample 0 when n·16000/44100 is not whole, ours
computes it. A packet the codec cannot decode is skipped, as the ffmpeg program does.

Memory: `decode_chunks` streams the 16 kHz waveform in chunks (the jobs use it, so their
memory does not grow with the track); `decode` concatenates them.
"""
from __future__ import annotations

import io
import logging
import math
import struct
from typing import BinaryIO, Iterator

import av
import numpy as np
import soxr

from musicrep.errors import AudioDecodeError
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig

logger = logging.getLogger(__name__)

_FLOAT_FORMATS = {"flt", "fltp", "dbl", "dblp"}
# Samples per channel of each 16-bit block handed to the channel sum and resampler (~0.4 s).
_PCM_BLOCK_SAMPLES = 16384


def decode(
    source: bytes | BinaryIO, *, config: FeatureConfig = DEFAULT_FEATURE_CONFIG
) -> np.ndarray:
    """Decodes audio bytes or a seekable binary file object to the model's waveform.

    Args:
      source: the encoded file (any container/codec FFmpeg reads), as bytes or a file
        object opened in binary mode.
      config: feature settings; uses decode_rate_hz, pcm_scale and sample_rate_hz.

    Returns:
      [n_samples] float32 mono at config.sample_rate_hz. A stereo file with L = R peaks
      at full scale, a mono file at half scale (channels are summed, as the reference does).

    Raises:
      AudioDecodeError: the bytes are empty, not audio, hold no audio stream, hold
        non-finite float samples, or decode to no samples.
    """
    return np.concatenate(list(decode_chunks(source, config=config)))


def decode_chunks(
    source: bytes | BinaryIO, *, config: FeatureConfig = DEFAULT_FEATURE_CONFIG, resample: bool = True
) -> Iterator[np.ndarray]:
    """`decode` as a stream: non-empty float32 chunks whose concatenation is decode's
    waveform, so a track of any length is held a chunk at a time (~16 s at most: the
    resampler's block). Raises as `decode` does, from the iteration. `resample=False`:
    the chunks before the resampler, at config.decode_rate_hz (16-bit PCM scaled and
    channels summed), for a front end that resamples on the model's device.

    A chained Ogg file (streams one after the other, as `cat a.ogg b.ogg` or a radio
    capture makes, each with its own rate and channels) is decoded whole, chain after
    chain, as the `ffmpeg` program does; FFmpeg's libraries stop at the first change.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    start = source.tell()
    if not source.read(1):
        raise AudioDecodeError("empty input: 0 bytes")
    source.seek(start)
    to_target = _resampler(config) if resample else _PassThrough()
    n_samples = 0
    for part in _ogg_chains(source, start):
        for chunk in _decode_container(part, config, to_target):
            if chunk.size:
                n_samples += chunk.size
                yield chunk
    last = to_target.resample_chunk(np.zeros(0, np.float32), last=True)
    if not n_samples + last.size:
        raise AudioDecodeError("the audio stream decoded to 0 samples")
    if last.size:
        yield last


class _PassThrough:
    """The resampler interface, passing samples through (decode_chunks(resample=False))."""

    def resample_chunk(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        return np.asarray(x, np.float32)


def _decode_container(source: BinaryIO, config: FeatureConfig, to_target) -> Iterator[np.ndarray]:
    try:
        container = av.open(source, mode="r")
    except (av.FFmpegError, OSError) as error:
        # FFmpeg's probe seeks around the file: on a tiny non-audio file the seek itself
        # fails (EINVAL), which is the same verdict as a failed probe.
        raise AudioDecodeError(f"not a readable audio file: {error}") from error
    with container:
        if not container.streams.audio:
            raise AudioDecodeError("the file holds no audio stream")
        yield from _decode_stream(container, config, to_target)


def _decode_stream(container: av.container.InputContainer, config: FeatureConfig, to_target) -> Iterator[np.ndarray]:
    stream = container.streams.audio[0]
    # None keeps the stream's own channel layout, as ffmpeg does without -ac.
    # Output in blocks of _PCM_BLOCK_SAMPLES: the per-frame work stays in FFmpeg, and numpy
    # and the resampler see a few large arrays instead of one small one per codec frame.
    def new_pcm16() -> av.AudioResampler:
        return av.AudioResampler(format="s16", layout=None, rate=config.decode_rate_hz, frame_size=_PCM_BLOCK_SAMPLES)

    to_pcm16, setup = new_pcm16(), None
    scale = np.float32(config.pcm_scale)
    n_blocks = n_packets = n_bad_packets = 0
    first_error: av.FFmpegError | None = None
    try:
        # The last packet demux yields is empty and flushes the decoder.
        for packet in container.demux(stream):
            n_packets += 1
            try:
                frames = packet.decode()
            except (av.InvalidDataError, av.error.PatchWelcomeError) as error:
                # The ffmpeg program (the reference's decoder) reports a corrupt packet
                # and carries on with the next one; so do we, and count them.
                n_bad_packets += 1
                first_error = first_error or error
                continue
            for frame in frames:
                _check_finite(frame)
                if setup is not None and (frame.format.name, frame.layout.name, frame.rate) != setup:
                    # The rate or channels change mid-stream (an mp3 cut from two
                    # sources): the ffmpeg program reconfigures its resampler, so do we.
                    for pcm in to_pcm16.resample(None):
                        n_blocks += 1
                        yield to_target.resample_chunk(_sum_channels(pcm, scale))
                    to_pcm16 = new_pcm16()
                setup = (frame.format.name, frame.layout.name, frame.rate)
                for pcm in to_pcm16.resample(frame):
                    n_blocks += 1
                    yield to_target.resample_chunk(_sum_channels(pcm, scale))
        for pcm in to_pcm16.resample(None):
            n_blocks += 1
            yield to_target.resample_chunk(_sum_channels(pcm, scale))
    except av.FFmpegError as error:
        raise AudioDecodeError(f"decoding failed: {error}") from error
    if n_bad_packets:
        if not n_blocks:
            raise AudioDecodeError(
                f"none of {n_packets} packets decoded; the first error: {first_error}"
            )
        logger.warning(
            "skipped %d of %d packets that did not decode (the first error: %s)",
            n_bad_packets, n_packets, first_error,
        )


_OGG_PAGE = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, segments
_OGG_BOS = 0x02


def _ogg_chains(source: BinaryIO, start: int) -> Iterator[BinaryIO]:
    """The file as one source, or, for a chained Ogg file, one read-only view per chain
    (a chain starts at a beginning-of-stream page that follows a page of the previous
    chain). Only page headers are read; a damaged page ends the scan (the rest stays
    with the chain before it, whose decoder then skips what it cannot read)."""
    source.seek(start)
    if source.read(4) != b"OggS":
        source.seek(start)
        yield source
        return
    boundaries = [start]
    position, previous_bos = start, True
    while True:
        source.seek(position)
        header = source.read(_OGG_PAGE.size)
        if len(header) < _OGG_PAGE.size:
            break
        capture, _, flags, _, _, _, _, n_segments = _OGG_PAGE.unpack(header)
        table = source.read(n_segments)
        if capture != b"OggS" or len(table) < n_segments:
            break
        bos = bool(flags & _OGG_BOS)
        if bos and not previous_bos:
            boundaries.append(position)
        previous_bos = bos
        position += _OGG_PAGE.size + n_segments + sum(table)
    end = source.seek(0, io.SEEK_END)
    if len(boundaries) == 1:
        source.seek(start)
        yield source
        return
    logger.info("chained Ogg: %d chains", len(boundaries))
    for begin, stop in zip(boundaries, boundaries[1:] + [end]):
        yield _FileView(source, begin, stop)


class _FileView(io.RawIOBase):
    """Bytes [begin, end) of a seekable binary file, as a file of their own."""

    def __init__(self, handle: BinaryIO, begin: int, end: int):
        super().__init__()
        self._handle, self._begin, self._end = handle, begin, end
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._end - self._begin}[whence]
        self._position = min(max(base + offset, 0), self._end - self._begin)
        return self._position

    def read(self, size: int = -1) -> bytes:
        left = self._end - self._begin - self._position
        size = left if size is None or size < 0 else min(size, left)
        self._handle.seek(self._begin + self._position)
        data = self._handle.read(size)
        self._position += len(data)
        return data


def _sum_channels(pcm: av.AudioFrame, scale: np.float32) -> np.ndarray:
    # Packed s16 arrives as [1, samples·channels], interleaved. The channels are summed as
    # integers held in float32 (exact: |sum| < 2**24), then scaled by a power of two (exact),
    # so the values are those of scaling each channel first, without numpy's slow reduction
    # over a short axis (10x this).
    channels = len(pcm.layout.channels)
    interleaved = pcm.to_ndarray().reshape(-1, channels)
    total = interleaved[:, 0].astype(np.float32)
    for channel in range(1, channels):
        total += interleaved[:, channel]
    total *= scale
    return total


def _check_finite(frame: av.AudioFrame) -> None:
    # Conversion to 16-bit PCM would silently turn NaN/inf into arbitrary full-scale
    # values; a float file holding them is corrupt, so say so.
    if frame.format.name in _FLOAT_FORMATS and not np.isfinite(frame.to_ndarray()).all():
        raise AudioDecodeError("the file holds non-finite (NaN or inf) float samples")


def _resampler(config: FeatureConfig):
    """A streaming resampler decode_rate_hz → sample_rate_hz with soxr's interface."""
    if config.resampler == "kaiser_best":
        return KaiserBestResampler(config.decode_rate_hz, config.sample_rate_hz)
    return soxr.ResampleStream(
        config.decode_rate_hz, config.sample_rate_hz, 1, dtype="float32", quality="HQ"
    )


class KaiserBestResampler:
    """Streaming rational-ratio resampler with resampy's `kaiser_best` filter.

    The output sample j sits at input time τ_j = j · orig / target and is
    Σ_i x[i] · h(τ_j − i), with x zero outside the signal and (s = min(1, target / orig))

        h(τ) = s · ρ · sinc(s · ρ · τ) · I0(β·sqrt(1 − (s·τ / Z)²)) / I0(β),  |s·τ| ≤ Z,

    ρ = 0.9173473712608761, β = 12.9846, Z = 50 (the parameters resampy 0.4 publishes for
    its precomputed `kaiser_best` table; resampy interpolates that table, we evaluate h
    directly, a difference below 1e-7). With up / down the reduced ratio target / orig,
    outputs come in groups of `up` that all read one window of W input samples starting
    at a multiple of `down`, so a block of groups is one [groups, W] @ [W, up] product.

    `resample_chunk(x, last=False)` takes float32 chunks and returns the outputs they
    complete; the call with last=True flushes. In all, ceil(n_in · target / orig)
    samples come out (librosa's length).
    """

    ROLLOFF = 0.9173473712608761
    BETA = 12.9846
    ZERO_CROSSINGS = 50
    # Input samples gathered before a product: small products lose most of their time to
    # BLAS thread start-up (8x slower on a busy 2-core machine at 16k samples).
    _MIN_BLOCK_SAMPLES = 1 << 18

    def __init__(self, orig_rate_hz: int, target_rate_hz: int):
        common = math.gcd(orig_rate_hz, target_rate_hz)
        self._up, self._down = target_rate_hz // common, orig_rate_hz // common
        scale = min(1.0, target_rate_hz / orig_rate_hz)
        half_width = self.ZERO_CROSSINGS / scale  # in input samples
        self._lo = math.ceil(-half_width)
        hi = math.floor((self._up - 1) * self._down / self._up + half_width)
        self._width = hi - self._lo + 1
        # taus[w, p]: input time of output phase p minus input sample lo + w.
        taus = (np.arange(self._up) * self._down / self._up)[None, :] - (
            self._lo + np.arange(self._width)
        )[:, None]
        u = np.clip(scale * taus / self.ZERO_CROSSINGS, -1.0, 1.0)
        window = np.i0(self.BETA * np.sqrt(1.0 - u**2)) / np.i0(self.BETA)
        window[np.abs(scale * taus) > self.ZERO_CROSSINGS] = 0.0
        taps = scale * self.ROLLOFF * np.sinc(scale * self.ROLLOFF * taus) * window
        self._taps = np.ascontiguousarray(taps, dtype=np.float32)
        # The buffer starts at input index (next group) · down + lo; before the signal: 0.
        self._buffer = np.zeros(-self._lo, np.float32)
        self._pending: list[np.ndarray] = []  # chunks not yet appended to the buffer
        self._n_pending = 0
        self._n_in = 0
        self._n_out = 0

    def layout(self) -> tuple[int, int, int, int, np.ndarray]:
        """(up, down, lo, width, taps [up, width]): the polyphase filter as it is applied,
        so a front end elsewhere (the device one, in the model's graph) applies the same."""
        return self._up, self._down, self._lo, self._width, self._taps

    def resample_chunk(self, x: np.ndarray, last: bool = False) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        self._n_in += x.size
        # Chunks are gathered in a list and joined once per product: appending each one
        # to the buffer would copy the buffer once per chunk.
        if x.size:
            self._pending.append(x)
            self._n_pending += x.size
        if not last and self._buffer.size + self._n_pending < self._MIN_BLOCK_SAMPLES:
            return np.zeros(0, np.float32)  # wait for a block large enough to amortise the products
        buffer = np.concatenate([self._buffer, *self._pending])
        self._pending, self._n_pending = [], 0
        if last:
            n_out_total = -(-self._n_in * self._up // self._down)
            n_groups = -(-(n_out_total - self._n_out) // self._up)
            need = max(n_groups - 1, 0) * self._down + self._width
            buffer = np.pad(buffer, (0, max(need - buffer.size, 0)))
        else:
            n_groups = max((buffer.size - self._width) // self._down + 1, 0)
        if n_groups <= 0:
            self._buffer = buffer
            return np.zeros(0, np.float32)
        # One product over the full window: splitting it by phase to skip the taps'
        # zeros (1.6x fewer multiply-adds) would regroup the float32 sums and move the
        # quietest low bands' log-mel by up to ~7e-5 (measured), more than parity allows.
        windows = np.lib.stride_tricks.sliding_window_view(buffer, self._width)[
            : n_groups * self._down : self._down
        ]
        out = (np.ascontiguousarray(windows) @ self._taps).reshape(-1)
        if last:
            out = out[: n_out_total - self._n_out]
        self._n_out += out.size
        self._buffer = buffer[n_groups * self._down :]
        return out
