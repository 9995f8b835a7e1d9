"""The sidecar of a model export, `<uri>/model.json`, next to the weights `<uri>/model.keras`.

It says what the weights expect without loading them: `model_id` (sha256 of the config
and every weight, so two exports with the same id compute the same function), the
SF-NFNet config, the feature settings (FeatureConfig JSON and its sha256), the embedding
size and the shortest input. Launchers read it once, without TensorFlow, and hand it to
the workers (musicrep.model.export writes it and loads the weights).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from musicrep import fileio
from musicrep.contracts.feature_config import FeatureConfig
from musicrep.errors import ConfigError

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
SIDECAR_FILE = "model.json"


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
    """The sidecar of an export (`model.json`)."""

    model_id: str
    config: dict[str, Any]
    feature_config: dict[str, Any]
    feature_config_sha256: str
    embedding_size: int
    n_mels: int
    min_frames: int
    n_parameters: int
    source: str
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str = "model.json") -> ExportMetadata:
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where} is not JSON ({error})") from None
        if not isinstance(fields, dict) or fields.get("format_version") != FORMAT_VERSION:
            found = fields.get("format_version") if isinstance(fields, dict) else None
            raise ConfigError(f"{where}: unsupported export format_version {found!r} (this musicrep reads {FORMAT_VERSION})")
        names = {field.name for field in dataclasses.fields(cls)}
        if set(fields) - names or {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - set(fields):
            raise ConfigError(f"{where}: fields {sorted(fields)} are not those of a musicrep export sidecar")
        return cls(**fields)

    @property
    def features(self) -> FeatureConfig:
        return FeatureConfig.from_json(json.dumps(self.feature_config))


def sidecar_uri(uri: str) -> str:
    return fileio.join(uri, SIDECAR_FILE)


def read_metadata(uri: str) -> ExportMetadata:
    """The sidecar of the export at `uri` (local or gs://), without loading the weights;
    ConfigError naming the path when it is missing or unreadable."""
    path = sidecar_uri(uri)
    try:
        text = fileio.read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"no model export at {uri}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the model export's sidecar {path}: {error}") from None
    return ExportMetadata.from_json(text, where=path)
