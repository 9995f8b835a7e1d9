"""Keeping a store in shape: compaction, vacuum, run history, and the one-time import of
a store of the previous format (STORE/current/*.parquet + STORE/runs.jsonl)."""
from __future__ import annotations

import datetime
import io
import json
import logging
import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from musicrep import fileio
from musicrep.contracts import schema
from musicrep.contracts.layout import STAGING_DIR
from musicrep.errors import ConfigError
from musicrep.contracts.window_spec import WindowSpec
from musicrep.store import table

logger = logging.getLogger(__name__)

PREVIOUS_CURRENT = "current"
PREVIOUS_RUNS = "runs.jsonl"
# Rows of the previous format lack these columns: its reembed always used the default
# windows (3 s at 0.5 Hz, every window, mean) and ran TensorFlow in float32. A run with
# other settings recomputes them; `--engine tf --precision fp32` keeps them.
IMPORT_DEFAULTS = {
    "aggregate": "mean",
    "max_windows": None,
    "window_spec": WindowSpec().key(),
    "engine": "tf",
    "precision": "fp32",
}


def _open(store: str, options: dict[str, str] | None):
    delta = table.open_table(store, options)
    if delta is None:
        raise ConfigError(f"no store (Delta table) at {store}")
    return delta


def compact(store: str, options: dict[str, str] | None = None) -> dict[str, Any]:
    """Merges small data files (e.g. many small nightly runs) into files of about
    table.ROWS_PER_FILE rows, as one commit; readers see the same rows before and after."""
    from deltalake.transaction import CommitProperties

    delta = _open(store, options)
    size = table.embedding_size_of(delta)
    if size is None:  # no data files: nothing to merge
        return {"version": delta.version(), "numFilesAdded": 0, "numFilesRemoved": 0}
    metrics = delta.optimize.compact(
        target_size=table.ROWS_PER_FILE * schema.row_bytes(size),
        commit_properties=CommitProperties(custom_metadata={table.RUN_KEY: {"operation": "compact"}}),
    )
    return {"version": delta.version(), **{k: metrics[k] for k in ("numFilesAdded", "numFilesRemoved") if k in metrics}}


def vacuum(store: str, *, retention_hours: float, dry_run: bool = False, options: dict[str, str] | None = None) -> list[str]:
    """Deletes files older than `retention_hours` that the table no longer references:
    files superseded by commits (readers of older versions need them until then) and
    files of runs that never committed (killed, or refused by a concurrent commit),
    including their STORE/_staging/RUN_ID folders."""
    delta = _open(store, options)
    removed = delta.vacuum(
        retention_hours=int(retention_hours),
        dry_run=dry_run,
        enforce_retention_duration=False,
        full=True,
    )
    cutoff = time.time() - retention_hours * 3600
    staged = _staging_runs_older_than(store, cutoff)
    if not dry_run:
        for run_dir in staged:
            fileio.remove_tree(fileio.join(store, run_dir))
    return sorted(removed) + staged


def _staging_runs_older_than(store: str, cutoff_s: float) -> list[str]:
    """STAGING_DIR/RUN_ID folders (relative to STORE) whose newest file is older than the cutoff."""
    root = fileio.join(store, STAGING_DIR)
    newest: dict[str, float] = {}
    if fileio.is_local(root) and os.path.isdir(root):
        newest = {entry.name: entry.stat().st_mtime for entry in os.scandir(root) if entry.is_dir()}
    for info in fileio.list_files(fileio.join(root, "**")):
        run_id = info.path[len(root) :].lstrip("/").split("/", 1)[0]
        newest[run_id] = max(newest.get(run_id, 0.0), info.mtime_s)
    return sorted(f"{STAGING_DIR}/{run_id}" for run_id, mtime in newest.items() if mtime <= cutoff_s)


def history(store: str, *, limit: int | None = None, options: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return table.runs(_open(store, options), limit)


def format_history(entries: list[dict[str, Any]]) -> str:
    lines = []
    for entry in entries:
        when = datetime.datetime.fromtimestamp(entry["timestamp_ms"] / 1000, datetime.timezone.utc).isoformat(timespec="seconds")
        run = entry["run"] or {}
        if "plan" in run:
            plan = run["plan"]
            what = (
                f"run {run['run_id']}: {plan['listed']} listed, {plan['new']} new, {plan['changed']} changed, "
                f"{plan['stale']} stale, {plan['deleted']} deleted; {run['tracks_embedded']} embedded, "
                f"{run['tracks_failed']} failed, {run['rows_rewritten']} rows rewritten; "
                f"model {str(run['settings'].get('model_id'))[:12]}, {run.get('seconds')} s"
            )
        else:
            what = json.dumps(run, sort_keys=True) if run else ""
        lines.append(f"v{entry['version']}  {when}  {entry['operation']:<14} {what}".rstrip())
    return "\n".join(lines)


def import_previous(store: str, *, options: dict[str, str] | None = None) -> dict:
    """Turns a store of the previous format into the Delta table, once: its rows go into
    data/import-*/ with null source columns (so the next reembed run reads and hashes each
    object once: same bytes keep their embedding), its runs.jsonl into the commit info;
    then current/ and runs.jsonl are removed."""
    current = fileio.join(store, PREVIOUS_CURRENT)
    files = fileio.glob(fileio.join(current, "embeddings-*.parquet"))
    runs_path = fileio.join(store, PREVIOUS_RUNS)
    if table.open_table(store, options) is not None:
        raise ConfigError(f"{store} is a Delta table already; nothing to import")
    if not files:
        raise ConfigError(f"no {PREVIOUS_CURRENT}/embeddings-*.parquet under {store}: not a store of the previous format")
    rows = pa.concat_tables([pq.read_table(io.BytesIO(fileio.read_bytes(path))) for path in files])
    size = rows.schema.field("embedding").type.list_size
    arrow_schema = schema.store_schema(size)
    for field in arrow_schema:
        if field.name not in rows.column_names:
            value = IMPORT_DEFAULTS.get(field.name)
            rows = rows.append_column(field, pa.array([value] * rows.num_rows, field.type))
    rows = rows.select(arrow_schema.names).cast(arrow_schema)
    previous_runs = [json.loads(line) for line in fileio.read_text(runs_path).splitlines() if line.strip()] if fileio.exists(runs_path) else []
    delta = table.create_table(store, size, options)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    adds = []
    for number, start in enumerate(range(0, rows.num_rows, table.ROWS_PER_FILE)):
        path = f"{table.DATA_DIR}/import-{stamp}/part-{number:05d}.parquet"
        buffer = io.BytesIO()
        pq.write_table(rows.slice(start, table.ROWS_PER_FILE), buffer)
        fileio.write_bytes(fileio.join(store, path), buffer.getvalue())
        adds.append(table.describe_file(store, path))
    record = {"operation": "import", "source": f"{PREVIOUS_CURRENT}/ + {PREVIOUS_RUNS}", "rows": rows.num_rows, "previous_runs": previous_runs}
    version, _ = table.commit(delta, adds=adds, removes=[], run=record, options=options)
    fileio.delete(sorted(set(fileio.glob(fileio.join(current, "*")) + [runs_path])))
    if fileio.is_local(current):
        fileio.remove_tree(current)
    return {"version": version, "rows": rows.num_rows, "files": len(adds), "previous_runs": len(previous_runs)}
