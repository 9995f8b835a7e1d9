"""The store's delta-rs object-store options, as the command lines take them."""
from __future__ import annotations

from musicrep.errors import ConfigError


def storage_options(pairs: list[str] | None) -> dict[str, str]:
    """`KEY=VALUE` strings (CLI --storage-option) → delta-rs object-store options.

    On GCS delta-rs finds Application Default Credentials itself; options are for other
    set-ups (e.g. `google_service_account=/path/key.json`)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"a storage option is KEY=VALUE, got {pair!r}")
        options[key.strip()] = value
    return options
