"""What every job writes besides its main output: dead letters. (How outputs replace
the previous run's is the launcher's commit: musicrep.pipelines.commit.)"""
from __future__ import annotations

import json

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
