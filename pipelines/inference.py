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

from musicrep.contracts.layout import METRICS_NAMESPACE
from musicrep.features.windows import cut_windows
from musicrep.contracts.sidecar import ExportMetadata
from musicrep.pipelines.settings import InferenceSpec

logger = logging.getLogger(__name__)

# Windows in one RunInference call: 4 full chunks, 16 model batches of 32.
MAX_WINDOWS_PER_CALL = 512


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

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (RunInference's batch-size metric)."""
        return self.log_mel.nbytes + self.starts.nbytes


Piece = tuple[int, slice]  # (element index, the slice of its windows) within one model batch


def plan_batches(elements: Sequence[Any], batch_size: int) -> Iterator[tuple[int, list[Piece]]]:
    """Yields (window length, pieces) per model batch of at most `batch_size` windows.

    Elements are TrackWindows or AudioTrackWindows (`starts`, `window_frames`). Windows of
    several elements share a batch, consecutive windows of one element are one piece;
    elements with another window length (tracks shorter than one window) are batched
    among themselves.
    """
    by_length: dict[int, list[int]] = {}
    for index, element in enumerate(elements):
        by_length.setdefault(element.window_frames, []).append(index)
    for length, indices in by_length.items():
        pieces, filled = [], 0
        for i in indices:
            n, first = len(elements[i].starts), 0
            while first < n:
                take = min(batch_size - filled, n - first)
                pieces.append((i, slice(first, first + take)))
                filled, first = filled + take, first + take
                if filled == batch_size:
                    yield length, pieces
                    pieces, filled = [], 0
        if pieces:
            yield length, pieces


def iterate_batches(tracks: Sequence[TrackWindows], batch_size: int) -> Iterator[tuple[int, np.ndarray, list[Piece]]]:
    """Yields (window length, windows [b, n_mels, w], pieces) per model batch (plan_batches).

    Each batch is cut straight into its own array, so a window is copied once and a call
    never holds all its windows cut.
    """
    for length, pieces in plan_batches(tracks, batch_size):
        n_mels = tracks[pieces[0][0]].log_mel.shape[1]
        windows = np.empty((windows_in(pieces), n_mels, length), np.float32)
        filled = 0
        for i, part in pieces:
            starts = tracks[i].starts[part]
            cut_windows(tracks[i].log_mel, starts, length, out=windows[filled : filled + len(starts)])
            filled += len(starts)
        yield length, windows, pieces


def per_element(elements: Sequence[Any], embedded: Iterable[tuple[list[Piece], np.ndarray]]) -> list[np.ndarray]:
    """Each element's window embeddings [n_windows, d], in window order, from the
    (pieces, embeddings [b, d]) of its batches."""
    rows: list[np.ndarray | None] = [None] * len(elements)
    for pieces, embeddings in embedded:
        filled = 0
        for i, part in pieces:
            if rows[i] is None:
                rows[i] = np.empty((len(elements[i].starts), embeddings.shape[1]), embeddings.dtype)
            n = part.stop - part.start
            rows[i][part] = embeddings[filled : filled + n]
            filled += n
    return rows


def windows_in(pieces: list[Piece]) -> int:
    """Windows in a model batch."""
    return sum(part.stop - part.start for _, part in pieces)


def n_windows_of(chunk: TrackWindows) -> int:
    """A chunk's weight in RunInference's batches."""
    return len(chunk.starts)


class EmbeddingModelHandler(ModelHandler[TrackWindows, PredictionResult, Any]):
    """Loads a musicrep export as `spec` says and embeds TrackWindows elements."""

    def __init__(
        self,
        model_uri: str,
        spec: InferenceSpec = InferenceSpec(),
        *,
        metadata: ExportMetadata | None = None,
        max_windows_per_call: int = MAX_WINDOWS_PER_CALL,
    ):
        super().__init__()
        self._model_uri = model_uri
        self._spec = spec
        self._metadata = metadata  # the launcher's read of the sidecar, so workers do not read it again
        self._max_windows = max_windows_per_call

    @property
    def spec(self) -> InferenceSpec:
        return self._spec

    def load_model(self) -> "LoadedModel":
        from musicrep.model.engines import load_embedder, resolve_engine

        spec = self._spec
        # Workers on the launcher's machine got the engine it resolved there; others pick
        # for their own hardware.
        engine = spec.engine if spec.hardware_checked else resolve_engine(spec.engine, spec.precision)
        embedder = load_embedder(
            self._model_uri,
            metadata=self._metadata,
            engine=engine,
            precision=spec.precision,
            cpu_threads=spec.cpu_threads,
            jit_compile=spec.jit_compile and engine == "tf",
            check_hardware=not spec.hardware_checked,
        )
        logger.info("embedding with engine %s (asked: %s), precision %s", engine, spec.engine, spec.precision)
        return LoadedModel(embedder=embedder, batch_size=spec.batch_size, engine=engine)

    def run_inference(
        self, batch: Sequence[TrackWindows], model: "LoadedModel", inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        embedded = ((pieces, model.embed(windows)) for _, windows, pieces in iterate_batches(batch, self._spec.batch_size))
        for track, rows in zip(batch, per_element(batch, embedded)):
            # inference: per-window embeddings [n_windows, d], in window order; model_id:
            # the engine that ran (the rows record it: with "auto" only the worker knows).
            yield PredictionResult(example=track, inference=rows, model_id=model.engine)

    def batch_elements_kwargs(self) -> dict:
        # Elements are chunks of up to 128 windows (a short track, or part of a long one):
        # batches are bounded in windows, so a call holds at most ~max_windows_per_call
        # windows cut out (115 KB each at 300 frames) whatever the track lengths. Counted in
        # chunks, 16 chunks of a long track cut 2,048 windows: +500 MB on a 10-hour track.
        # A fixed size, not Beam's adaptive one: that starts at one chunk and grows, and a
        # call of one short track's chunk pads a model batch for every few windows.
        return {"min_batch_size": self._max_windows, "max_batch_size": self._max_windows,
                "element_size_fn": n_windows_of}

    def get_num_bytes(self, batch: Sequence[TrackWindows]) -> int:
        # Beam's default pickles the whole batch only to measure it (~60 MB a call).
        return sum(chunk.nbytes for chunk in batch)

    def share_model_across_processes(self) -> bool:
        return self._spec.large_model

    def model_copies(self) -> int:
        return self._spec.model_copies or 1

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


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
