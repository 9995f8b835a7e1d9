"""Usage errors of the jobs: found once, at the edge (musicrep.pipelines.settings, the probe
and pre-training configs), answered in one line with exit 2, before Beam or TensorFlow is
imported (issue 19)."""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from musicrep.pipelines.synthetic import write_synthetic_export

PROBE = (
    "import sys\n"
    "from musicrep import cli\n"
    "code = cli.main(sys.argv[1:])\n"
    "heavy = [m for m in ('tensorflow', 'keras', 'apache_beam') if m in sys.modules]\n"
    "print('imported:' + ','.join(heavy))\n"
    "sys.exit(code)\n"
)


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("usage")
    (root / "a.wav").write_bytes(b"RIFF")  # named by the globs below; never decoded
    write_synthetic_export(str(root / "model"), model_id="m" * 64)
    (root / "broken").mkdir()
    (root / "broken" / "model.json").write_text("{not json")
    return root


CASES = {
    "no model": (["embed", "--audio", "{root}/*.wav", "--model", "{root}/no-such-dir", "--output", "{root}/o"],
                 "no model export at {root}/no-such-dir: {root}/no-such-dir/model.json does not exist"),
    "unreadable sidecar": (["reembed", "--catalog", "{root}/*.wav", "--model", "{root}/broken", "--store", "{root}/s"],
                           "{root}/broken/model.json is not JSON"),
    "infinite hop": (["embed", "--audio", "{root}/*.wav", "--model", "{root}/model", "--output", "{root}/o", "--hop-s", "inf"],
                     "window and hop must be finite numbers > 0 s, got window 3.0 s, hop inf s"),
    "nan window": (["reembed", "--catalog", "{root}/*.wav", "--model", "{root}/model", "--store", "{root}/s", "--window-s", "nan"],
                   "window and hop must be finite numbers > 0 s, got window nan s"),
    "zero copies": (["embed", "--audio", "{root}/*.wav", "--model", "{root}/model", "--output", "{root}/o", "--large-model",
                     "--model-copies", "0"], "model copies must be >= 1 (or unset for 1), got 0"),
    "copies without a large model": (["embed", "--audio", "{root}/*.wav", "--model", "{root}/model", "--output", "{root}/o",
                                      "--model-copies", "2"], "add --large-model"),
    "infinite budget": (["features", "--input", "{root}/*.wav", "--output", "{root}/o", "--time-budget-s", "inf"],
                        "the per-track time budget must be a finite number > 0 s"),
    "negative shards": (["features", "--input", "{root}/*.wav", "--output", "{root}/o", "--shards", "-1"],
                        "--shards must be >= 0, got -1"),
    "nothing matches": (["features", "--input", "{root}/*.mp3", "--output", "{root}/o"], "no files match '{root}/*.mp3'"),
    "max windows": (["embed", "--features", "{root}/x", "--model", "{root}/model", "--output", "{root}/o", "--max-windows", "0"],
                    "--max-windows must be >= 1, got 0"),
    "probe without a task": (["probe", "--embeddings", "{root}/e.parquet", "--labels", "{root}/l.csv", "--output", "{root}/p"],
                             "give --task or --preset"),
    "probe with a contradicting task": (["probe", "--embeddings", "{root}/e.parquet", "--labels", "{root}/l.csv",
                                         "--output", "{root}/p", "--preset", "MTT", "--task", "multiclass"],
                                        "--task multiclass contradicts preset MTT"),
    "pretrain steps": (["pretrain", "simclr", "--features", "{root}/f", "--output", "{root}/p", "--steps", "-5"],
                       "steps must be ≥ 1, got -5"),
    "manifest catalog": (["reembed", "--catalog", "{root}/list.csv", "--model", "{root}/model", "--store", "{root}/s"],
                         "reembed needs a glob for --catalog"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_usage_error_is_one_line_exit_2_within_two_seconds_without_beam_or_tensorflow(case, paths):
    argv, message = CASES[case]
    argv = [arg.format(root=paths) for arg in argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the command, start-up included: what a user waits for on an idle
    # machine, without the noise of a busy one (wall time here is a second or less).
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"musicrep {argv[0]}: ")
    assert message.format(root=paths) in done.stderr
    assert done.stdout.strip() == "imported:"  # neither Beam nor TensorFlow nor Keras
    assert seconds < 2.0
