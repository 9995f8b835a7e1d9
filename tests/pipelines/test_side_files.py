"""WriteTotals and WriteSortedLines: how a job hands the launcher what it computed from the data."""
from __future__ import annotations

import apache_beam as beam
import pytest

from musicrep.pipelines import commit
from musicrep.pipelines.outputs import WriteSortedLines, WriteTotals, read_side_lines, read_side_total

IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def test_totals_and_lines_are_written_whole_and_read_back(tmp_path):
    paths = {name: str(tmp_path / "staging" / f"{name}.txt") for name in ("count", "sum", "none", "lines", "no_lines")}
    with beam.Pipeline(argv=IN_MEMORY) as pipeline:
        words = pipeline | "Words" >> beam.Create(["pear", "apple", "fig"])
        empty = pipeline | "Nothing" >> beam.Create([])
        counted = {"count": words, "sum": words, "none": empty}
        _ = counted | "Totals" >> WriteTotals(paths.get, {"sum": len})
        _ = words | "Lines" >> WriteSortedLines(paths["lines"])
        _ = empty | "NoLines" >> WriteSortedLines(paths["no_lines"])
    assert (read_side_total(paths["count"]), read_side_total(paths["sum"]), read_side_total(paths["none"])) == (3, 12, 0)
    assert open(paths["none"]).read() == "0"  # an empty input is a total of 0, not a missing file
    assert read_side_lines(paths["lines"]) == ["apple", "fig", "pear"]
    assert read_side_lines(paths["no_lines"]) == [] and read_side_lines(str(tmp_path / "absent.txt")) == []
    assert read_side_total(str(tmp_path / "absent.txt")) == 0


def test_each_total_is_its_own_inputs_sum_across_bundles(tmp_path):
    # Several bundles per input (the multi-process runner), one of them empty: each total
    # is its own input's sum, whatever the others hold.
    staging = str(tmp_path / "staging")
    argv = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    with beam.Pipeline(argv=argv) as pipeline:
        numbers = pipeline | "Numbers" >> beam.Create(range(1, 1001)) | "Spread" >> beam.Reshuffle()
        odd = numbers | "Odd" >> beam.Filter(lambda n: n % 2)
        none = numbers | "None" >> beam.Filter(lambda n: n < 0)
        counted = {"numbers": numbers, "sum_of_odd": odd, "none": none}
        _ = counted | "Totals" >> commit.write_totals(staging, {"sum_of_odd": int})
    totals = {name: read_side_total(f"{staging}/{commit.TOTALS_PREFIX}-{name}.txt") for name in counted}
    assert totals == {"numbers": 1000, "sum_of_odd": 250_000, "none": 0}


def test_all_totals_of_a_job_share_one_combine(tmp_path):
    # Each combine is stages of its own on every runner: a job's totals add one, not one each.
    pipeline = beam.Pipeline(argv=IN_MEMORY)
    words = pipeline | "Words" >> beam.Create(["pear", "apple"])
    _ = {f"total{i}": words for i in range(4)} | "Totals" >> commit.write_totals(str(tmp_path))
    transforms = pipeline.to_runner_api().components.transforms.values()
    combines = [t for t in transforms if t.spec.urn == "beam:transform:combine_per_key:v1"]
    assert len(combines) == 1


def test_a_value_for_no_input_is_refused_when_the_pipeline_is_built(tmp_path):
    # A misspelt name would otherwise be a total that is never written (read back as 0).
    pipeline = beam.Pipeline(argv=IN_MEMORY)
    words = pipeline | "Words" >> beam.Create(["pear"])
    with pytest.raises(ValueError, match=r"\['bytes_raed'\] name no input"):
        _ = {"bytes_read": words} | "Totals" >> commit.write_totals(str(tmp_path), {"bytes_raed": len})
