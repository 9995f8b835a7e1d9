"""`--log-mel-on device` in the embed jobs (embed --audio, reembed): the workers' CPUs only
decode (FFmpeg to 44.1 kHz, channels summed); resampling, STFT, mel and log run in the
model's graph (musicrep.model.device_frontend).

`EmbedAudioInputWindows` streams a track's decoded samples into AudioTrackWindows chunks
(windows placed as the CPU path places them; musicrep.features.audio_windows);
`DeviceFrontEndHandler` batches their windows across tracks into the graph. Both feed the
same EmbedTracks stage as the CPU front end: ToPartials reads `track_id`, `first_frame`
and `starts` of an element, whatever it holds. `audio_compute` and `model_handler` pick
the CPU or device pieces for a WindowSpec, so the launchers name neither.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from musicrep.features import front_end_process
from musicrep.features.audio_windows import AudioTrackWindower, AudioWindowGeometry, cut_audio_windows, geometry
from musicrep.contracts.window_spec import WindowSpec
from musicrep.pipelines.embed_transforms import EmbedAudioWindows, failed, track_end
from musicrep.pipelines.features import StreamTrack, TrackInProgress
from musicrep.contracts.sidecar import ExportMetadata, read_metadata
from musicrep.pipelines.inference import EmbeddingModelHandler, Piece, per_element, plan_batches, windows_in
from musicrep.pipelines.settings import InferenceSpec


@dataclasses.dataclass(frozen=True)
class AudioTrackWindows:
    """Consecutive windows of one track as decoded input (features.audio_windows.
    AudioWindowChunk's `audio`, `offsets`, `positions`), with the fields EmbedTracks reads."""

    track_id: str
    uri: str
    content_sha256: str
    feature_config_sha256: str
    audio: np.ndarray
    offsets: np.ndarray
    positions: np.ndarray
    starts: np.ndarray
    window_frames: int
    first_frame: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (RunInference's batch-size metric)."""
        return self.audio.nbytes + self.offsets.nbytes + self.positions.nbytes + self.starts.nbytes


class _AudioTrack:
    """One track's AudioTrackWindower and the fields of its elements."""

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec, track: TrackInProgress):
        window_frames, hop_frames = windows.frames(metadata.features)
        self.windower = AudioTrackWindower(
            config=metadata.features,
            window_frames=window_frames,
            hop_frames=hop_frames,
            max_windows=windows.max_windows,
            min_frames=metadata.min_frames,
            max_samples=windows.max_samples(metadata.features),
        )
        self.track_id, self.uri, self.content_sha256 = track.track_id, track.uri, track.content_sha256
        self.feature_config_sha256 = metadata.feature_config_sha256

    def elements(self, chunks) -> Iterator[AudioTrackWindows]:
        for chunk in chunks:
            yield AudioTrackWindows(
                track_id=self.track_id,
                uri=self.uri,
                content_sha256=self.content_sha256,
                feature_config_sha256=self.feature_config_sha256,
                audio=chunk.audio,
                offsets=chunk.offsets,
                positions=chunk.positions,
                starts=chunk.starts,
                window_frames=chunk.window_frames,
                first_frame=chunk.first_frame,
            )


class EmbedAudioInputWindows(StreamTrack):
    """(track_id, uri) → AudioTrackWindows chunks and the track's end or failure
    ("partials"): EmbedAudioWindows for the device front end (only decoding on the CPU)."""

    front_end = front_end_process.AUDIO

    def __init__(self, *, metadata: ExportMetadata, windows: WindowSpec, time_budget_s: float | None = None):
        geometry(metadata.features)  # refuses a front end the graph does not implement, in the launcher
        windows.frames(metadata.features)
        super().__init__(metadata.features, time_budget_s=time_budget_s, max_samples=windows.max_samples(metadata.features))
        self._metadata = metadata
        self._windows = windows

    def on_block(self, track: TrackInProgress, block: np.ndarray) -> Iterator:
        if track.state is None:
            track.state = _AudioTrack(metadata=self._metadata, windows=self._windows, track=track)
        yield from track.state.elements(track.state.windower.push(block))

    def on_end(self, track: TrackInProgress) -> Iterator:
        state = track.state
        yield from state.elements(state.windower.finish())
        windower = state.windower
        yield track_end(state, duration_s=track.duration_s, n_windows=windower.n_windows, window_frames=windower.window_frames)

    def on_failure(self, track: TrackInProgress, letter: dict) -> Iterator:
        yield beam.pvalue.TaggedOutput("partials", failed(letter))


class DeviceFrontEndHandler(EmbeddingModelHandler):
    """RunInference handler whose model takes decoded audio windows (engine tf: the front
    end is TF ops); windows of several tracks share a batch, as in EmbeddingModelHandler."""

    def load_model(self) -> "AudioModel":
        from musicrep.model.device_frontend import load_audio_embedder
        from musicrep.model.engines import resolve_engine

        spec = self.spec
        metadata = self._metadata or read_metadata(self._model_uri)
        engine = spec.engine if spec.hardware_checked else resolve_engine(spec.engine, spec.precision, log_mel_on="device")
        embedder = load_audio_embedder(
            self._model_uri, metadata=metadata, precision=spec.precision, cpu_threads=spec.cpu_threads,
            jit_compile=spec.jit_compile, check_hardware=not spec.hardware_checked,
        )
        features = geometry(metadata.features)
        return AudioModel(embedder=embedder, batch_size=spec.batch_size, geometry=features, engine=engine)

    def run_inference(
        self, batch: Sequence[AudioTrackWindows], model: "AudioModel", inference_args: dict | None = None
    ) -> Iterable[PredictionResult]:
        for track, rows in zip(batch, per_element(batch, self._embedded(batch, model))):
            yield PredictionResult(example=track, inference=rows, model_id=model.engine)

    @staticmethod
    def _embedded(batch: Sequence[AudioTrackWindows], model: "AudioModel") -> Iterator[tuple[list[Piece], np.ndarray]]:
        # Each model batch is cut straight into its own array, as the log-mel windows are.
        for length, pieces in plan_batches(batch, model.batch_size):
            size = model.geometry.input_samples(length)
            audio = np.empty((windows_in(pieces), size), np.float32)
            filled = 0
            for i, part in pieces:
                offsets = batch[i].offsets[part]
                cut_audio_windows(batch[i].audio, offsets, size, out=audio[filled : filled + len(offsets)])
                filled += len(offsets)
            positions = np.concatenate([batch[i].positions[part] for i, part in pieces])
            yield pieces, model.embed(audio, positions, length)


@dataclasses.dataclass
class AudioModel:
    """The device front end's embedder at a fixed batch size (one compiled shape per window length)."""

    embedder: Any
    batch_size: int
    geometry: AudioWindowGeometry
    engine: str = "tf"

    def embed(self, audio: np.ndarray, positions: np.ndarray, window_frames: int) -> np.ndarray:
        """Embeddings [n, d] of n ≤ batch_size windows; the batch is filled with copies of
        the first window (valid positions: zero rows would gather outside the segment)."""
        n = audio.shape[0]
        if n < self.batch_size:
            fill = np.zeros(self.batch_size - n, np.int64)
            audio, positions = np.concatenate([audio, audio[fill]]), np.concatenate([positions, positions[fill]])
        return self.embedder(np.ascontiguousarray(audio), np.ascontiguousarray(positions), window_frames)[:n]


def audio_compute(*, metadata: ExportMetadata, windows: WindowSpec, time_budget_s: float | None = None) -> StreamTrack:
    """The DoFn that turns (track_id, uri) into the model's elements for `windows.log_mel_on`."""
    kind = EmbedAudioInputWindows if windows.log_mel_on == "device" else EmbedAudioWindows
    return kind(metadata=metadata, windows=windows, time_budget_s=time_budget_s)


def model_handler(
    model_uri: str, inference: InferenceSpec, windows: WindowSpec, *, metadata: ExportMetadata | None = None
) -> EmbeddingModelHandler:
    """The RunInference handler for `windows.log_mel_on` (the pairing of engine and front
    end is checked where the settings are built); `metadata`: the export's sidecar."""
    kind = DeviceFrontEndHandler if windows.log_mel_on == "device" else EmbeddingModelHandler
    return kind(model_uri, inference, metadata=metadata)
