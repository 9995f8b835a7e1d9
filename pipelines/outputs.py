"""What every job writes besides its main output: dead letters, and side files — the
totals and id lists a launcher reads back after the run (how outputs replace the
previous run's is the launcher's commit: musicrep.pipelines.commit)."""
from __future__ import annotations

import json
from typing import Any, Callable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from musicrep import fileio

from musicrep.contracts.layout import ERRORS_PREFIX, SHARD_TEMPLATE



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


class WriteSideFile(beam.PTransform):
    """A PCollection → one small file at `path`, written whole by one worker.

    The only way a job hands the launcher what it computed from the data (runners differ
    in how, and whether, they report metrics). `total`: the sum of `value(element)` (1 each
    by default) as one integer, 0 for none; `lines`: the elements (strings) as sorted
    lines. No rename on finalisation, unlike Beam's text sink: GCS emulators lack the
    batch API Beam renames with, and a retried write only writes the same file again.
    """

    def __init__(self, path: str, *, combine: beam.CombineFn, format: Callable[[Any], str]):
        super().__init__()
        self._path, self._combine, self._format = path, combine, format

    @classmethod
    def total(cls, path: str, value: Callable[[Any], int] | None = None) -> "WriteSideFile":
        return cls(path, combine=_SumOf(value or _one), format=str)

    @classmethod
    def lines(cls, path: str) -> "WriteSideFile":
        return cls(path, combine=beam.combiners.ToListCombineFn(), format=_sorted_lines)

    def expand(self, elements):
        return (
            elements
            | "Combine" >> beam.CombineGlobally(self._combine)
            | "Write" >> beam.Map(_write_side_file, self._path, self._format)
        )


class _SumOf(beam.CombineFn):
    def __init__(self, value: Callable[[Any], int]):
        self._value = value

    def create_accumulator(self) -> int:
        return 0

    def add_input(self, total: int, element) -> int:
        return total + self._value(element)

    def merge_accumulators(self, totals) -> int:
        return sum(totals)

    def extract_output(self, total: int) -> int:
        return total


def _one(_) -> int:
    return 1


def _sorted_lines(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in sorted(lines))


def _write_side_file(combined, path: str, format: Callable[[Any], str]) -> str:
    fileio.write_text(path, format(combined))
    return path


def read_side_total(path: str) -> int:
    """What WriteSideFile.total wrote (0 when the file is missing)."""
    return int(fileio.read_text(path).strip() or 0) if fileio.exists(path) else 0


def read_side_lines(path: str) -> list[str]:
    """What WriteSideFile.lines wrote ([] when the file is missing)."""
    return fileio.read_text(path).splitlines() if fileio.exists(path) else []
