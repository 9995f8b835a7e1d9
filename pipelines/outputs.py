"""What every job writes besides its main output: dead letters, and the clean-up that
keeps an output directory from mixing two runs."""
from __future__ import annotations

import json
from typing import Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

ERRORS_PREFIX = "errors"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"


def error_record(*, track_id: str, uri: str, stage: str, error: BaseException | str) -> dict:
    """A dead-letter line: which input, which stage, and why."""
    if isinstance(error, BaseException):
        error_type, message = type(error).__name__, str(error) or repr(error)
    else:
        error_type, message = error, error
    return {"uri": uri, "track_id": track_id, "stage": stage, "error_type": error_type, "message": message}


class WriteDeadLetters(beam.PTransform):
    """Error records → DIR/errors-SSSSS-of-NNNNN.jsonl (one JSON object per line); the
    output is the written file names."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, errors):
        return (
            errors
            | "ToJson" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False, sort_keys=True))
            | "Write" >> beam.io.WriteToText(
                FileSystems.join(self._output_dir, ERRORS_PREFIX),
                file_name_suffix=".jsonl",
                num_shards=1,
                shard_name_template=SHARD_TEMPLATE,
            )
        )


class RemoveStaleOutputs(beam.DoFn):
    """After the writes, deletes earlier runs' shards that this run did not rewrite, so an
    output directory never mixes two runs (shard counts may differ between runs)."""

    def __init__(self, output_dir: str, prefixes: tuple[str, ...]):
        self._output_dir = output_dir
        self._prefixes = prefixes

    def process(self, written: list[str]) -> Iterator[str]:
        keep = {FileSystems.split(path)[1] for path in written}
        patterns = [FileSystems.join(self._output_dir, f"{prefix}-*-of-*") for prefix in self._prefixes]
        stale = [
            metadata.path
            for match in FileSystems.match(patterns)
            for metadata in match.metadata_list
            if FileSystems.split(metadata.path)[1] not in keep
        ]
        if stale:
            FileSystems.delete(stale)
        yield from stale


class ReplaceStaleOutputs(beam.PTransform):
    """Takes the file-name PCollections of every write of a run (a tuple) and removes the
    files with the same prefixes that the run did not write."""

    def __init__(self, output_dir: str, prefixes: tuple[str, ...]):
        super().__init__()
        self._output_dir = output_dir
        self._prefixes = prefixes

    def expand(self, written):
        return (
            written
            | "WrittenFiles" >> beam.Flatten()
            | "CollectWritten" >> beam.combiners.ToList()
            | "Remove" >> beam.ParDo(RemoveStaleOutputs(self._output_dir, self._prefixes))
        )
