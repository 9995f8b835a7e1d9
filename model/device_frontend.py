"""The front end as TensorFlow ops in the model's graph (`--log-mel-on device`): decoded
input windows (44.1 kHz, from musicrep.features.audio_windows) → kaiser_best resampling to
16 kHz → centred STFT → |·|² → mel → log10(1 + 10000·M) → the network.

A GPU worker then runs only FFmpeg decoding (and the channel sum) on its CPU. The maths is
the CPU front end's (features/audio.py, features/log_mel.py), op for op:

- resampling is KaiserBestResampler's polyphase product as one strided convolution:
  conv1d(x [B, N, 1], taps [width, 1, up], stride down) → [B, G, up] → [B, G·up], the same
  filter taps (computed once in numpy);
- the reflect padding at the track's ends is a gather: padded position p of the window
  reads sample |p|, or 2(n − 1) − p past the end n (np.pad's reflection for pads < n);
- frames of `win` samples every `hop`, times the periodic Hann window, zero-padded to
  n_fft by the real FFT (the CPU path puts the window's samples first in its n_fft buffer
  too: the circular shift against librosa's centring changes only the phase);
- power @ mel filterbank (librosa's, as the CPU path), then log1p(gain·M) / ln 10.

Parity with the CPU front end (float32 on both sides, other FFT and summation orders) is
tested in tests/model/test_device_frontend.py.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np

from musicrep.features.audio_windows import FIRST_SAMPLE, N_SAMPLES, SEGMENT_START, geometry
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.contracts.sidecar import ExportMetadata, read_metadata

logger = logging.getLogger(__name__)

# audio windows [b, input samples] float32, positions [b, 3] int32, window frames → [b, d]
AudioEmbedder = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


class DeviceLogMel:
    """`log_mel(audio, positions, window_frames)` → [b, n_mels, window_frames] float32 as TF
    ops (frequency first, as the network takes it); constants built once."""

    def __init__(self, config: FeatureConfig = DEFAULT_FEATURE_CONFIG):
        import tensorflow as tf

        from musicrep.features.log_mel import mel_filterbank

        self._config = config
        self._geometry = g = geometry(config)
        self._taps = tf.constant(g.taps[:, None, :])  # [width, in channels 1, up]
        self._mel = tf.constant(mel_filterbank(config))  # [n_fft // 2 + 1, n_mels]
        n = np.arange(config.win_samples, dtype=np.float64)
        self._hann = tf.constant((0.5 - 0.5 * np.cos(2.0 * np.pi * n / config.win_samples)).astype(np.float32))

    def resample(self, audio):
        """[b, input samples] → [b, G·up] 16 kHz samples of the window's groups."""
        import tensorflow as tf

        g = self._geometry
        groups = tf.nn.conv1d(audio[:, :, None], self._taps, stride=g.down, padding="VALID")
        return tf.reshape(groups, [tf.shape(audio)[0], -1])

    def log_mel(self, audio, positions, window_frames: int):
        import tensorflow as tf

        config = self._config
        segment = self.resample(audio)
        n_padded = (window_frames - 1) * config.hop_samples + config.win_samples
        p = positions[:, FIRST_SAMPLE : FIRST_SAMPLE + 1] + tf.range(n_padded, dtype=tf.int32)[None, :]
        last = positions[:, N_SAMPLES : N_SAMPLES + 1] - 1
        p = tf.abs(p)
        p = tf.where(p > last, 2 * last - p, p)
        padded = tf.gather(segment, p - positions[:, SEGMENT_START : SEGMENT_START + 1], batch_dims=1)
        frames = tf.signal.frame(padded, config.win_samples, config.hop_samples) * self._hann
        spectrum = tf.signal.rfft(frames, fft_length=[config.n_fft])
        power = tf.math.square(tf.math.real(spectrum)) + tf.math.square(tf.math.imag(spectrum))
        mel = tf.einsum("bfk,km->bfm", power, self._mel)
        log_mel = tf.math.log1p(mel * config.log_gain) * (1.0 / math.log(10.0))
        return tf.transpose(log_mel, [0, 2, 1])


def load_audio_embedder(
    uri: str,
    *,
    metadata: ExportMetadata | None = None,
    precision: str = "fp32",
    cpu_threads: int | None = None,
    jit_compile: bool = False,
    check_hardware: bool = True,
) -> AudioEmbedder:
    """The export at `uri` with the device front end in front: (audio windows, positions,
    window frames) → embeddings [b, d] float32 (engine tf; the front end stays float32).
    `metadata`: its sidecar, if read already."""
    import tensorflow as tf

    from musicrep.model.engines import tensorflow_model

    metadata = metadata or read_metadata(uri)
    front = DeviceLogMel(metadata.features)
    model = tensorflow_model(
        uri, metadata=metadata, precision=precision, cpu_threads=cpu_threads, check_hardware=check_hardware
    )

    @tf.function(jit_compile=jit_compile, reduce_retracing=True)
    def forward(audio, positions, window_frames):
        return model(front.log_mel(audio, positions, window_frames), training=False)

    def embed(audio: np.ndarray, positions: np.ndarray, window_frames: int) -> np.ndarray:
        return np.asarray(forward(audio, positions, int(window_frames)), dtype=np.float32)

    return embed
