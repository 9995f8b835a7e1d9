"""RunInference model handler for musicrep exports: one element = one track's windows.

Beam's stock TensorFlow handler mis-loads Keras 3 models (and imports tensorflow_hub),
so this small handler loads the export through `musicrep.model.engines` (TensorFlow or
OpenVINO, fp32 or bf16, as an InferenceSpec says) once per worker process (or once per
machine with --large-model), batches windows *across* tracks to a fixed batch size and
returns them per track. Windows are cut inside the handler from the track's log-mel, so
no per-window tensor is ever shuffled between workers.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from musicrep.errors import ConfigError
from musicrep.features.windows import cut_windows
from musicrep.model.engines import AUTO_ENGINE, check_names

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrackWindows:
    """A track's log-mel [n_frames, n_mels] (or a chunk of it, from track frame
    `first_frame`) and where its windows start in it (frames)."""

    track_id: str
    uri: str
    content_sha256: str
    duration_s: float
    feature_config_sha256: str
    log_mel: np.ndarray
    starts: np.ndarray
    window_frames: int
    first_frame: int = 0


@dataclasses.dataclass(frozen=True)
class InferenceSpec:
    """How the model runs. `engine` and `precision` are written into every output row.

    Attributes:
        batch_size: windows per model call (the last batch of a bundle is zero-padded).
        engine: "auto" (each worker picks for its hardware: musicrep.model.engines.
            resolve_engine), "tf" or "openvino". Rows record the engine that ran.
        precision: "fp32" or "bf16"; bf16 needs bf16 hardware on the worker (AMX or
            AVX-512 BF16 on a CPU; a GPU with engine "tf") and is refused elsewhere.
        large_model: one model per machine shared by its worker processes (GPU workers).
        model_copies: with large_model, copies per machine (default 1).
        cpu_threads: threads of one model on a CPU worker (default: the engine's).
        jit_compile: engine "tf" only: XLA-compile the forward.
    """

    batch_size: int = 32
    engine: str = AUTO_ENGINE
    precision: str = "fp32"
    large_model: bool = False
    model_copies: int | None = None
    cpu_threads: int | None = None
    jit_compile: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {self.batch_size}")
        check_names(engine=self.engine, precision=self.precision, allow_auto=True)
        if self.jit_compile and self.engine not in ("tf", AUTO_ENGINE):
            raise ConfigError(f"jit_compile is a TensorFlow option; engine is {self.engine!r}")


def iterate_batches(
    tracks: Sequence[TrackWindows], batch_size: int
) -> Iterator[tuple[int, np.ndarray, list[tuple[int, int]]]]:
    """Yields (window length, windows [b, n_mels, w], [(track index, window index)]).

    Windows of several tracks share a batch; tracks with another window length (tracks
    shorter than one window) are batched among themselves. Each track's windows are cut
    once, in one array per length; batches are views of it.
    """
    by_length: dict[int, list[int]] = {}
    for index, track in enumerate(tracks):
        by_length.setdefault(track.window_frames, []).append(index)
    for length, indices in by_length.items():
        owners = [(i, j) for i in indices for j in range(len(tracks[i].starts))]
        windows = np.concatenate([cut_windows(tracks[i].log_mel, tracks[i].starts, length) for i in indices])
        for begin in range(0, len(owners), batch_size):
            yield length, windows[begin : begin + batch_size], owners[begin : begin + batch_size]


class EmbeddingModelHandler(ModelHandler[TrackWindows, PredictionResult, Any]):
    """Loads a musicrep export as `spec` says and embeds TrackWindows elements."""

    def __init__(self, model_uri: str, spec: InferenceSpec = InferenceSpec(), *, max_tracks_per_batch: int = 16):
        super().__init__()
        self._model_uri = model_uri
        self._spec = spec
        self._max_tracks = max_tracks_per_batch

    @property
    def spec(self) -> InferenceSpec:
        return self._spec

    def load_model(self) -> "LoadedModel":
        from musicrep.model.engines import load_embedder, resolve_engine

        spec = self._spec
        engine = resolve_engine(spec.engine, spec.precision)
        embedder = load_embedder(
            self._model_uri,
            engine=engine,
            precision=spec.precision,
            cpu_threads=spec.cpu_threads,
            jit_compile=spec.jit_compile and engine == "tf",
        )
        logger.info("embedding with engine %s (asked: %s), precision %s", engine, spec.engine, spec.precision)
        return LoadedModel(embedder=embedder, batch_size=spec.batch_size, engine=engine)

    def run_inference(
        self, batch: Sequence[TrackWindows], model: "LoadedModel", inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        rows: list[list[np.ndarray]] = [[] for _ in batch]
        for _, windows, owners in iterate_batches(batch, self._spec.batch_size):
            # Owners come in window order within each track, so appending keeps that order.
            for (i, _), row in zip(owners, model.embed(windows)):
                rows[i].append(row)
        for track, track_rows in zip(batch, rows):
            # inference: per-window embeddings [n_windows, d], in window order; model_id:
            # the engine that ran (the rows record it: with "auto" only the worker knows).
            yield PredictionResult(example=track, inference=np.stack(track_rows), model_id=model.engine)

    def batch_elements_kwargs(self) -> dict:
        # Elements are whole tracks (tens to hundreds of windows each): batching a few
        # tracks fills model batches without holding many tracks in memory.
        return {"min_batch_size": 1, "max_batch_size": self._max_tracks}

    def share_model_across_processes(self) -> bool:
        return self._spec.large_model

    def model_copies(self) -> int:
        return self._spec.model_copies or 1

    def get_metrics_namespace(self) -> str:
        return "musicrep"


@dataclasses.dataclass
class LoadedModel:
    """An engine's embedder run at a fixed batch size (one compiled shape per window length);
    `engine`: the engine it is (recorded in the rows)."""

    embedder: Any
    batch_size: int
    engine: str = "tf"

    def embed(self, windows: np.ndarray) -> np.ndarray:
        """Embeddings [n, d] of windows [n, n_mels, w], n ≤ batch_size, padded to the batch size."""
        n = windows.shape[0]
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n, *windows.shape[1:]), windows.dtype)
            windows = np.concatenate([windows, pad])
        return self.embedder(np.ascontiguousarray(windows))[:n]
