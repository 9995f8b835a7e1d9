"""Synthesised test audio, encoded with PyAV to any container the tests need."""
from __future__ import annotations

import av
import numpy as np

# container format, codec, sample format the encoder takes
CODECS = {
    "wav": ("wav", "pcm_s16le", "s16"),
    "flac": ("flac", "flac", "s16"),
    "mp3": ("mp3", "libmp3lame", "fltp"),
    "ogg": ("ogg", "vorbis", "fltp"),
    "opus": ("ogg", "libopus", "flt"),
    "m4a": ("mp4", "aac", "fltp"),
}


def tone(freq_hz: float, duration_s: float, rate_hz: int, *, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(duration_s * rate_hz))) / rate_hz
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def write_audio(path: str, samples: np.ndarray, rate_hz: int, *, fmt: str | None = None) -> str:
    """Encodes float samples in [-1, 1], shape [n] or [n, channels], to `path`."""
    fmt = fmt or path.rsplit(".", 1)[-1]
    container_format, codec, sample_format = CODECS[fmt]
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    channels = samples.shape[1]
    if codec == "libopus" and rate_hz not in (8000, 12000, 16000, 24000, 48000):
        raise ValueError(f"opus needs 8/12/16/24/48 kHz, got {rate_hz}")
    layout = {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")
    with av.open(path, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate_hz, layout=layout)
        # FFmpeg's own vorbis encoder is marked experimental (PyAV's wheel has no libvorbis).
        stream.codec_context.options = {"strict": "experimental"}
        if sample_format == "s16":
            data = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
        else:
            data = samples
        frame_size = 1024
        for start in range(0, data.shape[0], frame_size):
            chunk = data[start : start + frame_size]
            if sample_format.endswith("p"):
                array = np.ascontiguousarray(chunk.T)
            else:
                array = np.ascontiguousarray(chunk.reshape(1, -1))
            frame = av.AudioFrame.from_ndarray(array, format=sample_format, layout=layout)
            frame.sample_rate = rate_hz
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
