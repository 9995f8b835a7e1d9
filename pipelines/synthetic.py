"""A model-free compute step for the store's benchmark and tests.

`SyntheticEmbedding` takes the place of reembed's EmbedAudio: it reads and hashes every
object as the real step does (and, like it, reports an object whose hash equals the
known one as unchanged), then derives a unit-norm embedding from the hash instead of
decoding and running a model. What it exercises is everything around the model:
listing, change detection, the Parquet writes, copy-on-write rewrites and the commit.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
from typing import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from musicrep import fileio
from musicrep.contracts import schema
from musicrep.contracts.layout import METRICS_NAMESPACE
from musicrep.pipelines.outputs import WriteTotals


def synthetic_embedding(content_sha256: str, size: int) -> np.ndarray:
    """A deterministic unit-norm float32 vector [size] seeded by a content hash."""
    vector = np.random.default_rng(int(content_sha256[:16], 16)).standard_normal(size).astype(np.float32)
    return vector / np.linalg.norm(vector)


class _HashAndEmbed(beam.DoFn):
    def __init__(self, settings: dict, embedding_size: int):
        self._settings = settings
        self._size = embedding_size
        self._names = schema.embedding_schema(embedding_size).names
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "audio_bytes_read")

    def process(self, element, known: dict[str, str]) -> Iterator:
        track_id, uri = element
        data = fileio.read_bytes(uri)
        self._bytes.inc(len(data))
        yield beam.pvalue.TaggedOutput("bytes", len(data))
        sha = hashlib.sha256(data).hexdigest()
        if known.get(track_id) == sha:
            yield beam.pvalue.TaggedOutput("unchanged", track_id)
            return
        row = dict.fromkeys(self._names)
        row.update(self._settings)
        row.update(
            track_id=track_id,
            uri=uri,
            content_sha256=sha,
            duration_s=0.0,
            n_windows=1,
            embedding=synthetic_embedding(sha, self._size),
            created_at=datetime.datetime.now(datetime.timezone.utc),
        )
        yield row


@dataclasses.dataclass
class SyntheticEmbedding(beam.PTransform):
    """{"tracks", "known"} → {"rows", "errors", "unchanged"}, as reembed.EmbedAudio.

    `bytes_read_path`: where to write the total of bytes read (one integer), if given."""

    settings: dict
    embedding_size: int
    bytes_read_path: str | None = None

    def __post_init__(self):
        super().__init__()

    def expand(self, inputs):
        done = inputs["tracks"] | "HashAndEmbed" >> beam.ParDo(
            _HashAndEmbed(self.settings, self.embedding_size), known=beam.pvalue.AsDict(inputs["known"])
        ).with_outputs("unchanged", "bytes", main="rows")
        if self.bytes_read_path:
            path = self.bytes_read_path
            _ = {"bytes_read": done.bytes} | "WriteBytesRead" >> WriteTotals(lambda _: path, {"bytes_read": int})
        errors = inputs["tracks"].pipeline | "NoErrors" >> beam.Create([])
        return {"rows": done.rows, "errors": errors, "unchanged": done.unchanged}


def write_synthetic_export(uri: str, *, model_id: str, embedding_size: int = 1728) -> None:
    """A sidecar-only model export (model.json, no weights): what reembed's launcher reads
    (model id, front end, embedding size). Only a model-free compute step can run with it."""
    import json

    from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG
    from musicrep.contracts.sidecar import ExportMetadata, sidecar_uri
    from musicrep.model.sf_nfnet import MIN_FRAMES, N_MELS

    metadata = ExportMetadata(
        model_id=model_id,
        config={},
        feature_config=json.loads(DEFAULT_FEATURE_CONFIG.to_json()),
        feature_config_sha256=DEFAULT_FEATURE_CONFIG.sha256(),
        embedding_size=embedding_size,
        n_mels=N_MELS,
        min_frames=MIN_FRAMES,
        n_parameters=0,
        source="synthetic",
    )
    fileio.write_text(sidecar_uri(uri), metadata.to_json())
