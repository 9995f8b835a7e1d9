"""`musicrep store compact|vacuum|history|import STORE`: the reembed store's maintenance."""
from __future__ import annotations

import argparse
import json

from musicrep.store import maintenance
from musicrep.store.options import storage_options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="musicrep store", description="Maintain a reembed store (a Delta Lake table).")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("compact", "merge small data files into files of ~1,000 rows (one commit; same rows)"),
        ("vacuum", "delete unreferenced files older than --retention-hours (superseded, or of runs that never committed)"),
        ("history", "print the store's commits: each run's counts, model and seconds"),
        ("import", "turn a store of the previous format (current/ + runs.jsonl) into the Delta table, once"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("store", metavar="STORE", help="the store directory (local or gs://)")
        command.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="delta-rs object-store option")
        if name == "vacuum":
            command.add_argument(
                "--retention-hours",
                type=float,
                default=168.0,
                help="keep unreferenced files younger than this (default 168 = 7 days: readers of older versions and "
                "runs in progress need theirs)",
            )
            command.add_argument("--dry-run", action="store_true", help="list what would be deleted")
        if name == "history":
            command.add_argument("--limit", type=int, default=None, help="newest N commits only")
            command.add_argument("--json", action="store_true", help="one JSON object per commit")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = storage_options(args.storage_option)
    if args.command == "compact":
        print(f"store compact: {json.dumps(maintenance.compact(args.store, options))}")
    elif args.command == "vacuum":
        removed = maintenance.vacuum(args.store, retention_hours=args.retention_hours, dry_run=args.dry_run, options=options)
        verb = "would delete" if args.dry_run else "deleted"
        print("\n".join([f"store vacuum: {verb} {len(removed)} files", *(f"  {path}" for path in removed)]))
    elif args.command == "history":
        entries = maintenance.history(args.store, limit=args.limit, options=options)
        print("\n".join(json.dumps(e, sort_keys=True) for e in entries) if args.json else maintenance.format_history(entries))
    else:
        print(f"store import: {json.dumps(maintenance.import_previous(args.store, options=options))}")
    return 0
