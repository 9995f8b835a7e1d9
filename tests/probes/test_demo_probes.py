"""The demo's last step, scripts/demo_probes.sh, on planted embeddings: the suite it
runs, the numbers it prints (they must be suite.json's) and its verdict.

The "pretrained" model's embeddings carry the instrument and the key, the "random-init"
one's carry only the key, so instrument must read "pre-training helps"; the whole
demo (synthesis and pre-training included) is timed by hand, see docs/demo.md.
"""
from __future__ import annotations

import json
import pathlib
import re
import subprocess

import numpy as np
import pytest

from musicrep.manifest import MANIFEST_NAME, MANIFEST_VERSION
from musicrep.probes.keys import key_name

REPO = pathlib.Path(__file__).resolve().parents[2]
N_TRACKS = 320  # the demo's catalog size, split 50/15/35 as demo.sh does
INSTRUMENTS = ("piano", "organ", "flute", "clarinet", "strings", "marimba")


def _commit(directory: pathlib.Path) -> None:
    """A manifest as the embed job commits it, so the script reads the directory."""
    names = sorted(p.name for p in directory.glob("embeddings-*.parquet"))
    manifest = {"version": MANIFEST_VERSION, "files": [{"kind": "embeddings", "name": n} for n in names]}
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.slow
def test_demo_probes_prints_the_suite_numbers_and_the_verdict(tmp_path, embedding_writer):
    write_embedding_files, write_labels_csv = embedding_writer
    rng = np.random.default_rng(3)
    track_ids = [f"track_{i:04d}" for i in range(N_TRACKS)]
    instrument = rng.integers(0, len(INSTRUMENTS), N_TRACKS)
    key = rng.integers(0, 24, N_TRACKS)
    key_signal = (3.0 * rng.standard_normal((24, 8)))[key]
    instrument_signal = (3.0 * rng.standard_normal((len(INSTRUMENTS), 8)))[instrument]
    noise = rng.standard_normal((N_TRACKS, 8))
    models = {"embeddings": np.hstack([instrument_signal, key_signal]) + rng.standard_normal((N_TRACKS, 16)),
              "embeddings-random": np.hstack([noise, key_signal]) + rng.standard_normal((N_TRACKS, 16))}
    for name, vectors in models.items():
        write_embedding_files(tmp_path / name, track_ids, vectors, shards=1, model_id=name)
        _commit(tmp_path / name)
    rank = rng.permutation(N_TRACKS) / N_TRACKS
    split = np.select([rank < 0.50, rank < 0.65], ["train", "valid"], "test").tolist()
    write_labels_csv(tmp_path / "labels-probe.csv", track_ids, {
        "split": split, "instrument": [INSTRUMENTS[i] for i in instrument],
        "key": [key_name(int(k)) for k in key]})

    result = subprocess.run(["bash", str(REPO / "scripts" / "demo_probes.sh"), str(tmp_path), "200"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-2000:] + (tmp_path / "probes.log").read_text()[-2000:]
    out = result.stdout
    suite = json.loads((tmp_path / "probes" / "suite.json").read_text())

    instrument_text = out.split("Instrument accuracy, linear probe")[1].split("Key MIREX")[0]
    for label, model in (("random-init", "random-init"), ("pretrained ", "pretrained")):
        cell = suite[model]["Instrument/accuracy"]
        shown = f"{label} {cell['mean']:.3f}  [{cell['ci95'][0]:.3f}, {cell['ci95'][1]:.3f}]"
        assert shown in instrument_text, (shown, instrument_text)
    versus = suite["pretrained"]["Instrument/accuracy"]["versus"]
    assert versus["model"] == "random-init" and versus["ci95"][0] > 0, versus
    assert f"→ pre-training helps: {versus['difference']:+.3f}" in instrument_text
    # Each line states the widest half-interval and whether it beats ±0.1, truthfully.
    for match in re.finditer(r"intervals ±([0-9.]+) at the widest \((narrower|NOT narrower) than", out):
        assert (float(match.group(1)) < 0.1) == (match.group(2) == "narrower"), match.group(0)
    assert len(re.findall(r"intervals ±", out)) == 2
    # Key: both models carry it, so the verdict is whichever the paired interval says.
    key_versus = suite["pretrained"]["Key/mirex_key_score"]["versus"]
    low, high = key_versus["ci95"]
    expected = "helps" if low > 0 else "HURTS" if high < 0 else "no clear difference"
    assert expected in out.split("Key MIREX")[1]
    # The instrument probe is the paper's linear NSynth preset, the key probe an MLP.
    report = json.loads((tmp_path / "probes" / "pretrained" / "Instrument" / "report.json").read_text())
    assert report["preset"]["name"] == "NSynth_I" and report["preset"]["hidden_units"] == []
