"""A track as a stream: decode → resample → log-mel in blocks of frames, so no stage
holds more than a few blocks of any track (musicrep.features.segments cuts the blocks
into shard records).

The numbers are those of the whole-array path (`decode` then `log_mel`): the blocks
concatenate to its log-mel (tests/features/test_streaming.py).
"""
from __future__ import annotations

from typing import BinaryIO, Iterator

import numpy as np

from musicrep.features.audio import decode_chunks
from musicrep.contracts.feature_config import DEFAULT_FEATURE_CONFIG, FeatureConfig
from musicrep.features.log_mel import LogMelStream


class TrackLogMel:
    """Iterating gives the track's log-mel [frames, n_mels] in non-empty blocks (~6 s
    each); with max_samples, the log-mel of the waveform's first that many samples.
    After the iteration, `n_samples` and `duration_s` are the waveform's.

    The iteration raises AudioDecodeError (decode) or ConfigError (log-mel). The jobs run
    it in a child process (musicrep.features.front_end_process), which bounds its time.
    """

    def __init__(
        self,
        source: bytes | BinaryIO,
        *,
        config: FeatureConfig = DEFAULT_FEATURE_CONFIG,
        max_samples: int | None = None,
    ):
        self._source, self._config = source, config
        self._max_samples = max_samples
        self.n_samples = 0

    @property
    def duration_s(self) -> float:
        return self.n_samples / self._config.sample_rate_hz

    def __iter__(self) -> Iterator[np.ndarray]:
        stream = LogMelStream(self._config)
        remaining = self._max_samples
        for chunk in decode_chunks(self._source, config=self._config):
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= chunk.size
            self.n_samples += chunk.size
            block = stream.push(chunk)
            if block.shape[0]:
                yield block
            if remaining == 0:
                break  # closes the decoder: the rest of the file is never read
        block = stream.finish()
        if block.shape[0]:
            yield block
