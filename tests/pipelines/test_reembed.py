"""Scheduled re-embedding: a second run over an unchanged catalog computes nothing."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil

import pandas as pd

from audio_files import tone, write_audio
from musicrep.pipelines import reembed

IN_MEMORY = ["--direct_running_mode", "in_memory", "--direct_num_workers", "1"]


def store_digest(store: str) -> dict[str, str]:
    files = sorted(glob.glob(f"{store}/current/*"))
    return {os.path.basename(f): hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files}


def current_rows(store: str) -> pd.DataFrame:
    files = sorted(glob.glob(f"{store}/current/embeddings-*.parquet"))
    return pd.concat(pd.read_parquet(f) for f in files).set_index("track_id").sort_index()


def test_second_run_computes_nothing_and_a_change_recomputes_one_track(tmp_path, tiny_model_uri, capsys):
    catalog, store = tmp_path / "catalog", str(tmp_path / "store")
    catalog.mkdir()
    for i, freq in enumerate((220.0, 330.0, 440.0)):
        write_audio(str(catalog / f"t{i}.flac"), tone(freq, 5.0, 44100), 44100)
    args = ["--catalog", f"{catalog}/*.flac", "--model", tiny_model_uri, "--store", store, *IN_MEMORY]

    reembed.run(args)
    first = store_digest(store)
    assert sorted(current_rows(store).index) == ["t0", "t1", "t2"]

    reembed.run(args)
    assert store_digest(store) == first  # byte for byte
    runs = reembed.read_runs(store)
    assert [(r["tracks_embedded"], r["windows_embedded"], r["tracks_unchanged"], r["changed"]) for r in runs] == [
        (3, 6, 0, True),
        (0, 0, 3, False),
    ]
    assert not glob.glob(f"{store}/staging-*")

    before = current_rows(store)
    write_audio(str(catalog / "t1.flac"), tone(370.0, 5.0, 44100), 44100)
    os.remove(catalog / "t2.flac")
    shutil.copy(catalog / "t0.flac", catalog / "t3.flac")
    reembed.run(args)
    last = reembed.read_runs(store)[-1]
    assert (last["tracks_embedded"], last["tracks_unchanged"], last["changed"]) == (2, 1, True)
    after = current_rows(store)
    assert sorted(after.index) == ["t0", "t1", "t3"]
    assert after.loc["t0", "created_at"] == before.loc["t0", "created_at"]
    assert after.loc["t1", "content_sha256"] != before.loc["t1", "content_sha256"]
    assert "3 tracks, 2 embedded, 1 unchanged, 0 failed; store updated" in capsys.readouterr().out
