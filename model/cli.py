"""`musicrep model init|info|import-mule`: create, inspect and import model exports."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile

import keras

from musicrep import fileio
from musicrep.model import export, mule_import
from musicrep.model.export import ExportMetadata
from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS, build_sf_nfnet

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelResult:
    """What `musicrep model COMMAND` did: the export it wrote (init, import-mule) or read (info)."""

    command: str
    export_dir: str
    metadata: ExportMetadata

    @property
    def model_id(self) -> str:
        return self.metadata.model_id

    def summary(self) -> str:
        """`info` prints the sidecar (its purpose); the others one line."""
        if self.command == "info":
            return self.metadata.to_json()
        return (f"model {self.command}: wrote {self.export_dir} (model {self.model_id}, "
                f"{self.metadata.config['name']}, {self.metadata.n_parameters:,} parameters)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="musicrep model", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="write a randomly initialised SF-NFNet export")
    init.add_argument("--config", choices=sorted(SF_NFNET_VARIANTS), default="F0")
    init.add_argument("--seed", type=int, default=0, help="seed of every initialiser")
    init.add_argument("--output", required=True, help="export directory (local path or gs://…)")
    info = commands.add_parser("info", help="print the sidecar of an export")
    info.add_argument("uri", help="export directory (local path or gs://…)")
    mule = commands.add_parser("import-mule", help="convert the released MULE model.keras to an export")
    mule.add_argument("model_keras", metavar="MODEL_KERAS", help="the reference backbone file (Keras 2.13 .keras)")
    mule.add_argument("--output", required=True, help="export directory (local path or gs://…)")
    return parser


def run(argv: list[str] | None = None) -> ModelResult:
    """Entry point of `musicrep model`."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "init":
        keras.utils.set_random_seed(args.seed)
        config = SF_NFNET_VARIANTS[args.config]
        metadata = export.save(
            build_sf_nfnet(config), args.output, config=config, source=f"init seed={args.seed}"
        )
    elif args.command == "info":
        metadata = export.read_metadata(args.uri)
    else:
        with tempfile.TemporaryDirectory(prefix="musicrep-mule-") as tmp:
            local = mule_import.fetch_local(args.model_keras, tmp)
            with fileio.open_read(local) as handle:
                source = f"mule-import {args.model_keras} sha256={fileio.sha256_of(handle)}"
            model = mule_import.import_mule(local)
        metadata = export.save(model, args.output, config=SF_NFNET_VARIANTS["F0"], source=source)
    return ModelResult(args.command, args.uri if args.command == "info" else args.output, metadata)
