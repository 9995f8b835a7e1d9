"""One exception family for every input that musicrep refuses.

Two kinds of refusal, kept apart so each reaches the right person:
- `ConfigError`: bad usage (an option, a path, a settings file). The command stops before
  any work, prints one line and exits 2.
- `RecordError` (and `AudioDecodeError`, `TooShortError`): bad data in one record of a
  catalog. A job sends that record to its dead letters with the message and goes on.
"""


class MusicrepError(Exception):
    """Base class of every error musicrep raises on purpose."""


class ConfigError(MusicrepError, ValueError):
    """A setting or argument outside what the method allows (bad usage)."""


class RecordError(MusicrepError):
    """One record (a track, a shard row) whose data cannot be used (bad data, a dead letter)."""


class AudioDecodeError(RecordError):
    """Audio bytes that cannot be turned into a waveform (corrupt, empty, not audio)."""


class TooShortError(RecordError):
    """Audio or features shorter than the minimum the computation needs."""


class TrackTimeoutError(RecordError):
    """A track that took longer than the per-track time budget (the worker moves on)."""
