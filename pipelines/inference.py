"""RunInference model handler for musicrep exports: one element = one track's windows.

Beam's stock TensorFlow handler mis-loads Keras 3 models (and imports tensorflow_hub),
so this small handler loads `musicrep.model.load(uri)` once per worker process (or once
per machine with --large-model), batches windows *across* tracks to a fixed batch size
and averages them per track. Windows are cut inside the handler from the track's
log-mel, so no per-window tensor is ever shuffled between workers.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from musicrep.features.windows import cut_windows

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrackWindows:
    """A track's log-mel [n_frames, n_mels] and where its windows start (frames)."""

    track_id: str
    uri: str
    content_sha256: str
    duration_s: float
    feature_config_sha256: str
    log_mel: np.ndarray
    starts: np.ndarray
    window_frames: int


def iterate_batches(
    tracks: Sequence[TrackWindows], batch_size: int
) -> Iterator[tuple[int, np.ndarray, list[tuple[int, int]]]]:
    """Yields (window length, windows [b, n_mels, w], [(track index, window index)]).

    Windows of several tracks share a batch; tracks with another window length (tracks
    shorter than one window) are batched among themselves.
    """
    by_length: dict[int, list[int]] = {}
    for index, track in enumerate(tracks):
        by_length.setdefault(track.window_frames, []).append(index)
    for length, indices in by_length.items():
        owners = [(i, j) for i in indices for j in range(len(tracks[i].starts))]
        for begin in range(0, len(owners), batch_size):
            chunk = owners[begin : begin + batch_size]
            windows = np.stack(
                [cut_windows(tracks[i].log_mel, tracks[i].starts[j : j + 1], length)[0] for i, j in chunk]
            )
            yield length, windows, chunk


class EmbeddingModelHandler(ModelHandler[TrackWindows, PredictionResult, Any]):
    """Loads a musicrep export and embeds TrackWindows elements."""

    def __init__(
        self,
        model_uri: str,
        *,
        batch_size: int = 32,
        max_tracks_per_batch: int = 16,
        large_model: bool = False,
        model_copies: int | None = None,
        jit_compile: bool = False,
        cpu_threads: int | None = None,
    ):
        super().__init__()
        self._model_uri = model_uri
        self._batch_size = batch_size
        self._max_tracks = max_tracks_per_batch
        self._large_model = large_model
        self._model_copies = model_copies
        self._jit_compile = jit_compile
        self._cpu_threads = cpu_threads

    def load_model(self) -> Any:
        import tensorflow as tf

        import musicrep.model

        gpus = tf.config.list_physical_devices("GPU")
        # Grow GPU memory on demand: several handlers (or a decoder) may share a GPU.
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        if not gpus and self._cpu_threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(self._cpu_threads)
                tf.config.threading.set_inter_op_parallelism_threads(self._cpu_threads)
            except RuntimeError:  # the runtime already started in this process: keep its pools
                logger.warning("TensorFlow already initialised; cannot limit it to %d threads", self._cpu_threads)
        model = musicrep.model.load(self._model_uri)
        # One traced graph per window length: batches are padded to batch_size below,
        # so the last, partial batch of a bundle does not retrace.
        forward = tf.function(
            lambda windows: model(windows, training=False),
            jit_compile=self._jit_compile,
            reduce_retracing=True,
        )
        return _LoadedModel(model=model, forward=forward)

    def run_inference(
        self, batch: Sequence[TrackWindows], model: "_LoadedModel", inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        rows: list[dict[int, np.ndarray]] = [{} for _ in batch]
        for _, windows, owners in iterate_batches(batch, self._batch_size):
            for (i, j), row in zip(owners, model.embed(windows, self._batch_size)):
                rows[i][j] = row
        for track, by_window in zip(batch, rows):
            # inference: per-window embeddings [n_windows, d], in window order.
            yield PredictionResult(example=track, inference=np.stack([by_window[j] for j in range(len(track.starts))]))

    def batch_elements_kwargs(self) -> dict:
        # Elements are whole tracks (tens to hundreds of windows each): batching a few
        # tracks fills model batches without holding many tracks in memory.
        return {"min_batch_size": 1, "max_batch_size": self._max_tracks}

    def share_model_across_processes(self) -> bool:
        return self._large_model

    def model_copies(self) -> int:
        return self._model_copies or 1

    def get_metrics_namespace(self) -> str:
        return "musicrep"


@dataclasses.dataclass
class _LoadedModel:
    model: Any
    forward: Any

    def embed(self, windows: np.ndarray, batch_size: int) -> np.ndarray:
        """Embeddings [n, d] of windows [n, n_mels, w], run in padded batches."""
        n = windows.shape[0]
        if n < batch_size:
            pad = np.zeros((batch_size - n, *windows.shape[1:]), windows.dtype)
            windows = np.concatenate([windows, pad])
        return np.asarray(self.forward(windows))[:n]
