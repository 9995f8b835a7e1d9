"""Musical keys as 24 classes: index = tonic pitch class (C = 0) + 12 for minor.

Accepts the spellings found in key datasets: `C major`, `A minor` (mir_eval's form),
`Bb:maj`, `f#:min`, `Db minor`, `G# maj`. Anything else is refused, echoing the value.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from musicrep.errors import ConfigError

N_KEYS = 24

_PITCH_CLASS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTAL = {"#": 1, "♯": 1, "b": -1, "♭": -1}
_MODE = {"major": 0, "maj": 0, "minor": 1, "min": 1}
# Names written back out, one per pitch class, in a form mir_eval accepts.
TONIC_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

_KEY_PATTERN = re.compile(r"^\s*([a-g])([#♯b♭]?)\s*[:\s]\s*([a-z]+)\s*$", re.IGNORECASE)


def parse_key(text: str) -> int:
    """The class index (0..23) of a key string such as `C major`, `Bb:maj` or `f#:min`."""
    match = _KEY_PATTERN.match(str(text))
    mode = match and _MODE.get(match.group(3).lower())
    if match is None or mode is None:
        raise ConfigError(
            f"cannot read key {text!r}; expected a tonic and a mode such as "
            "'C major', 'A minor', 'Bb:maj' or 'f#:min'")
    tonic = _PITCH_CLASS[match.group(1).lower()] + _ACCIDENTAL.get(match.group(2), 0)
    return tonic % 12 + 12 * mode


def parse_keys(texts: Iterable[str]) -> np.ndarray:
    """`parse_key` over a sequence; int64 array of class indices."""
    return np.asarray([parse_key(text) for text in texts], dtype=np.int64)


def key_name(index: int) -> str:
    """mir_eval's spelling of class `index`: `C major`, `Eb minor`, ..."""
    if not 0 <= int(index) < N_KEYS:
        raise ConfigError(f"key index {index!r} is outside 0..{N_KEYS - 1}")
    return f"{TONIC_NAMES[int(index) % 12]} {'minor' if int(index) >= 12 else 'major'}"
