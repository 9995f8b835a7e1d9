"""Transient storage faults (issue 17): the features and embed jobs on gs:// behind a
seeded fault-injecting proxy (429, 503 and reset connections on a share of requests,
commit and manifest writes included) either finish with outputs identical to a
fault-free run or fail with the previous committed set intact, never a partial or mixed
set. The faults injected (each one a retry the job had to make) are printed."""
from __future__ import annotations

import io
import json

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

import musicrep.model
from audio_files import tone, write_audio
from fault_proxy import FaultProxy
from job_outputs import without_run_id
from musicrep.model import SF_NFNET_VARIANTS
from musicrep.pipelines import embed, features

RUNNER = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
SEEDS = (1, 2, 3)
FAULT_RATE = 0.08


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    for i, duration_s in enumerate((5.0, 3.0, 4.5)):
        write_audio(str(root / f"t{i}.flac"), tone(220.0 * (1 + i / 3), duration_s, 44100), 44100)
    write_audio(str(root / "blip.flac"), tone(880.0, 0.1, 44100), 44100)  # too short: a dead letter
    return root


@pytest.fixture(scope="module")
def model_uri(gcs_emulator, tmp_path_factory):
    keras.utils.set_random_seed(3)
    config = SF_NFNET_VARIANTS["tiny"]
    uri = gcs_emulator.url("faults", "model")
    musicrep.model.save(musicrep.model.build_sf_nfnet(config), uri, config=config, source="test")
    return uri


def committed_set(gcs_emulator, prefix: str) -> dict[str, bytes]:
    """Every object below `prefix` (run ids taken out), read straight from the emulator."""
    names = [url.split("/", 3)[3] for url in gcs_emulator.list(prefix)]
    return {without_run_id(name[len(prefix):]): gcs_emulator.read_bytes(name) for name in names}


def comparable(blobs: dict[str, bytes]) -> dict:
    """What must not differ between two runs: names, manifest counts and files, shard
    bytes, dead letters, and embedding rows but for created_at."""
    out = {}
    for name, data in blobs.items():
        if name == "_MANIFEST.json":
            manifest = json.loads(data)
            out[name] = (manifest["counts"], sorted(without_run_id(f["name"]) for f in manifest["files"]))
        elif name.endswith(".parquet"):
            frame = pq.read_table(io.BytesIO(data)).to_pandas().drop(columns=["created_at"]).sort_values("track_id")
            frame["max_windows"] = frame["max_windows"].fillna(-1)  # null: NaN, never equal to itself
            out[name] = (frame.drop(columns=["embedding"]).to_dict("records"), np.stack(frame["embedding"]))
        else:
            out[name] = data
    return out


def assert_same(actual: dict, expected: dict, context) -> None:
    """Equal, embeddings to 1e-6 (model calls are not bit-reproducible run to run)."""
    assert sorted(actual) == sorted(expected), context
    for name, value in expected.items():
        if name.endswith(".parquet"):
            assert actual[name][0] == value[0], context
            np.testing.assert_allclose(actual[name][1], value[1], rtol=0, atol=1e-6, err_msg=str(context))
        else:
            assert actual[name] == value, (context, name)


def jobs(catalog, gcs_emulator, model_uri, out: str) -> None:
    shards = gcs_emulator.url(out, "features")
    features.run(["--input", f"{catalog}/*.flac", "--output", shards, *RUNNER])
    embed.run(["--features", shards, "--model", model_uri, "--output", gcs_emulator.url(out, "embeddings"), *RUNNER])


@pytest.mark.slow  # seven pairs of jobs, ~3 min on 2 cores
def test_jobs_behind_faults_finish_identical_or_leave_the_previous_set(gcs_emulator, catalog, model_uri, monkeypatch, capsys):
    jobs(catalog, gcs_emulator, model_uri, "faults/clean")
    clean = {kind: comparable(committed_set(gcs_emulator, f"faults/clean/{kind}/")) for kind in ("features", "embeddings")}
    assert clean["features"]["_MANIFEST.json"][0] == {"features": 4, "errors": 0}
    assert clean["embeddings"]["_MANIFEST.json"][0]["embeddings"] == 3
    report = []
    for seed in SEEDS:
        out = f"faults/seed{seed}"
        jobs(catalog, gcs_emulator, model_uri, out)  # the previous committed set, fault-free
        before = {kind: committed_set(gcs_emulator, f"{out}/{kind}/") for kind in ("features", "embeddings")}
        with FaultProxy(gcs_emulator.endpoint, rate=FAULT_RATE, seed=seed) as proxy:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
            try:
                jobs(catalog, gcs_emulator, model_uri, out)
                outcome = "finished"
            except Exception as error:  # a job gave up on a fault: the earlier set must stand
                outcome = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
        after = {kind: committed_set(gcs_emulator, f"{out}/{kind}/") for kind in ("features", "embeddings")}
        for kind in ("features", "embeddings"):
            manifest = json.loads(after[kind]["_MANIFEST.json"])
            listed = {without_run_id(f["name"]) for f in manifest["files"]}
            # Never a mixed set: what the manifest lists is there, and it is one run's.
            assert listed <= set(after[kind]) and len({f["name"].split("-")[1] for f in manifest["files"]}) <= 1
            if outcome != "finished":
                assert after[kind] == before[kind], (seed, kind)  # byte for byte
            assert_same(comparable(after[kind]), clean[kind], (seed, kind, outcome))
        report.append(f"seed {seed}: {proxy.requests} requests, faults {dict(proxy.faults)}, {outcome}")
        assert sum(proxy.faults.values()) > 0
    with capsys.disabled():
        print("\n" + "\n".join(report))
