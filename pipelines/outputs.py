"""What every job writes besides its main output: dead letters, and side files — the
totals and id lists a launcher reads back after the run (how outputs replace the
previous run's is the launcher's commit: musicrep.pipelines.commit)."""
from __future__ import annotations

import json
from typing import Any, Callable, Iterator, Mapping

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


class WriteSortedLines(beam.PTransform):
    """A PCollection of strings → one file at `path` of the sorted lines, written whole by
    one worker.

    With WriteTotals, the way a job hands the launcher what it computed from the data
    (runners differ in how, and whether, they report metrics). No rename on finalisation,
    unlike Beam's text sink: GCS emulators lack the batch API Beam renames with, and a
    retried write only writes the same file again.
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, lines):
        return (
            lines
            | "Combine" >> beam.CombineGlobally(beam.combiners.ToListCombineFn())
            | "Write" >> beam.Map(_write_lines, self._path)
        )


class WriteTotals(beam.PTransform):
    """{name: PCollection} → one file per name holding one integer: the sum of
    `values[name](element)` over that PCollection (1 each by default), 0 for none.

    Every total of a job goes through one combine: each CombineGlobally is a few more
    stages for the runner to build and run (~0.1 s each on the embedded runner).
    `path_of(name)` names each file; they are written whole by one worker, as in
    WriteSortedLines.
    """

    def __init__(self, path_of: Callable[[str], str], values: Mapping[str, Callable[[Any], int]] | None = None):
        super().__init__()
        self._path_of, self._values = path_of, dict(values or {})

    def expand(self, named: dict):
        # A value function for no PCollection would be a total silently never written.
        unknown = sorted(set(self._values) - set(named))
        if unknown:
            raise ValueError(f"WriteTotals: values for {unknown} name no input PCollection (inputs: {sorted(named)})")
        paths = {name: self._path_of(name) for name in named}
        tagged = [
            pcoll | f"Tag{name}" >> beam.Map(_tagged_value, name, self._values.get(name, _one))
            for name, pcoll in named.items()
        ]
        return (
            tagged
            | "Flatten" >> beam.Flatten()
            | "Sum" >> beam.CombineGlobally(_SumsByName(tuple(named)))
            | "Write" >> beam.FlatMap(_write_totals, paths)
        )


def _tagged_value(element, name: str, value: Callable[[Any], int]) -> tuple[str, int]:
    return name, value(element)


class _SumsByName(beam.CombineFn):
    def __init__(self, names: tuple[str, ...]):
        self._names = names

    def create_accumulator(self) -> dict[str, int]:
        return dict.fromkeys(self._names, 0)

    def add_input(self, totals: dict[str, int], tagged: tuple[str, int]) -> dict[str, int]:
        name, value = tagged
        totals[name] += value
        return totals

    def merge_accumulators(self, accumulators) -> dict[str, int]:
        merged = self.create_accumulator()
        for totals in accumulators:
            for name, value in totals.items():
                merged[name] += value
        return merged

    def extract_output(self, totals: dict[str, int]) -> dict[str, int]:
        return totals


def _one(_) -> int:
    return 1


def _write_totals(totals: dict[str, int], paths: dict[str, str]) -> Iterator[str]:
    for name, path in paths.items():
        fileio.write_text(path, str(totals[name]))
        yield path


def _sorted_lines(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in sorted(lines))


def _write_lines(lines: list[str], path: str) -> str:
    fileio.write_text(path, _sorted_lines(lines))
    return path


def read_side_total(path: str) -> int:
    """What WriteTotals wrote (0 when the file is missing)."""
    return int(fileio.read_text(path).strip() or 0) if fileio.exists(path) else 0


def read_side_lines(path: str) -> list[str]:
    """What WriteSortedLines wrote ([] when the file is missing)."""
    return fileio.read_text(path).splitlines() if fileio.exists(path) else []
