"""WriteSideFile: the one way a job hands the launcher what it computed from the data."""
from __future__ import annotations

import apache_beam as beam

from musicrep.pipelines.outputs import WriteSideFile, read_side_lines, read_side_total

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def test_totals_and_lines_are_written_whole_and_read_back(tmp_path):
    paths = {name: str(tmp_path / "staging" / f"{name}.txt") for name in ("count", "sum", "none", "lines", "no_lines")}
    with beam.Pipeline(argv=IN_MEMORY) as pipeline:
        words = pipeline | "Words" >> beam.Create(["pear", "apple", "fig"])
        empty = pipeline | "Nothing" >> beam.Create([])
        _ = words | "Count" >> WriteSideFile.total(paths["count"])
        _ = words | "Letters" >> WriteSideFile.total(paths["sum"], len)
        _ = empty | "CountNothing" >> WriteSideFile.total(paths["none"])
        _ = words | "Lines" >> WriteSideFile.lines(paths["lines"])
        _ = empty | "NoLines" >> WriteSideFile.lines(paths["no_lines"])
    assert (read_side_total(paths["count"]), read_side_total(paths["sum"]), read_side_total(paths["none"])) == (3, 12, 0)
    assert open(paths["none"]).read() == "0"  # an empty input is a total of 0, not a missing file
    assert read_side_lines(paths["lines"]) == ["apple", "fig", "pear"]
    assert read_side_lines(paths["no_lines"]) == [] and read_side_lines(str(tmp_path / "absent.txt")) == []
    assert read_side_total(str(tmp_path / "absent.txt")) == 0
