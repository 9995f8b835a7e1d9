"""Transient storage faults in `reembed` to a Delta store on gs:// (issue 17): the seeded
fault proxy (tests/fault_proxy.py: 429, 503, reset connections, and requests done with
their answer lost; in a process of its own, as delta-rs holds the GIL while it waits for
some answers) sits in front of
fake-gcs-server for everything the run sends, Beam's reads and writes (JSON API) and
delta-rs's table reads, commit and Delta log write (XML API, through the shim), the
requests under `_delta_log/` faulted more often. Each run either finishes with the store
a fault-free run makes or fails with the previous committed version intact (then a
fault-free rerun finishes it), never a partial or mixed version. The faults injected per
seed (each a request the client had to retry, or gave up on) are printed.

The model-free compute step (musicrep.pipelines.synthetic) stands in for decode + model: it
reads every object as the real step does, and the storage requests are what is tested.
"""
from __future__ import annotations

import json
import os
from urllib.parse import unquote

import pandas as pd
import pytest
from deltalake import DeltaTable

from fault_proxy import FAULTS, LOST, FaultProxyProcess
from gcs_xml_shim import FAKE_GCS_BUCKET
from musicrep.pipelines import reembed
from musicrep.pipelines.synthetic import SyntheticEmbedding, write_synthetic_export
from store_support import IN_MEMORY, object_bytes

SEEDS = (1, 2, 3)
FAULT_RATE = 0.08
LOG_FAULT_RATE = 0.3  # the Delta log: the version probe, the commit's put-if-absent, history
# The second catalog: a unchanged (a new generation, same bytes), b changed, c deleted, d new.
CATALOGS = {"v1": {"a": "", "b": "", "c": ""}, "v2": {"a": "", "b": "v2", "d": ""}}


def url(path: str) -> str:
    return f"gs://{FAKE_GCS_BUCKET}/{path}"


@pytest.fixture(scope="module")
def catalogs(fake_gcs):
    from google.cloud import storage

    bucket = storage.Client().bucket(FAKE_GCS_BUCKET)
    for version, objects in CATALOGS.items():
        for name, salt in objects.items():
            bucket.blob(f"faults/catalog-{version}/{name}.bin").upload_from_string(object_bytes(name, salt))
    return {version: url(f"faults/catalog-{version}/**") for version in CATALOGS}


def account_file(tmp_path, endpoint: str) -> str:
    """A service-account file sending delta-rs to `endpoint` (see gcs_xml_shim)."""
    path = tmp_path / f"account-{endpoint.rsplit(':', 1)[1]}.json"
    path.write_text(json.dumps({"gcs_base_url": endpoint, "disable_oauth": True, "client_email": "", "private_key": "", "private_key_id": ""}))
    return str(path)


def state(store: str, options: dict) -> tuple[int | None, list[dict]]:
    """(latest version, its rows but for created_at, by track id); (None, []) without a table."""
    from deltalake.exceptions import TableNotFoundError

    try:
        delta = DeltaTable(store, storage_options=options)
    except TableNotFoundError:
        return None, []
    frame = delta.to_pandas().drop(columns=["created_at"]).sort_values("track_id")
    frame["embedding"] = frame["embedding"].map(lambda vector: [float(x) for x in vector])
    return delta.version(), frame.astype(object).where(pd.notna(frame), None).to_dict("records")


def reembed_run(catalog: str, store: str, account: str, model: str) -> None:
    argv = ["--catalog", catalog, "--model", model, "--store", store, f"--storage-option=google_service_account={account}", *IN_MEMORY]
    reembed.run(argv, make_compute=SyntheticEmbedding)


@pytest.mark.slow  # ~20 reembed runs on gs://, ~4 min on 2 cores
def test_reembed_behind_faults_finishes_identical_or_keeps_the_committed_version(
    fake_gcs, catalogs, tmp_path, monkeypatch, capsys
):
    model = str(tmp_path / "model")
    write_synthetic_export(model, model_id="synthetic-faults", embedding_size=8)
    direct = {"google_service_account": fake_gcs.service_account}
    clean_store = url("faults/clean")
    clean = []  # the fault-free run's state after each catalog
    for version in CATALOGS:
        reembed_run(catalogs[version], clean_store, fake_gcs.service_account, model)
        clean.append(state(clean_store, direct))
    assert [(v, [row["track_id"] for row in rows]) for v, rows in clean] == [(1, ["a", "b", "c"]), (2, ["a", "b", "d"])]

    report = []
    for seed in SEEDS:
        store = url(f"faults/seed{seed}")
        outcomes, log_faults, log_writes = [], 0, 0
        for step, version in enumerate(CATALOGS):
            before = state(store, direct)
            proxy = FaultProxyProcess(
                fake_gcs.xml_endpoint, rate=FAULT_RATE, seed=100 * seed + step,
                path_rates={"_delta_log/": LOG_FAULT_RATE}, upstream_host=True, kinds=(*FAULTS, LOST),
            )
            with proxy:
                monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)  # Beam, through the proxy and the shim
                try:
                    reembed_run(catalogs[version], store, account_file(tmp_path, proxy.endpoint), model)
                    outcome = "finished"
                except Exception as error:  # the run gave up on a fault: the committed version must stand
                    outcome = f"failed ({type(error).__name__}: {' '.join(str(error).split())[:100]})"
                monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.endpoint)
            after = state(store, direct)
            if outcome == "finished":
                assert after == clean[step], (seed, version)
            else:
                # The previous version as it was; or, if the failure came after the commit
                # landed, the whole new version: never anything between.
                assert after == before or after == clean[step], (seed, version, outcome)
                reembed_run(catalogs[version], store, fake_gcs.service_account, model)  # the operator's rerun
                assert state(store, direct) == clean[step], (seed, version, "rerun")
            log_faults += sum("_delta_log" in unquote(path) for _, path, _ in proxy.faulted)
            log_writes += sum(method == "PUT" and "_delta_log/" in unquote(path) for method, path, _ in proxy.faulted)
            outcomes.append(f"{version} {outcome}: {proxy.requests} requests, {dict(sorted(proxy.faults.items()))}")
            assert sum(proxy.faults.values()) > 0, outcomes[-1]
        report.append(
            f"seed {seed}: " + "; ".join(outcomes) + f"; {log_faults} of the faults on _delta_log/, {log_writes} on its writes"
        )
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert os.environ["STORAGE_EMULATOR_HOST"] == fake_gcs.endpoint
