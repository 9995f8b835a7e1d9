"""One exception family for every input that musicrep refuses."""


class MusicrepError(Exception):
    """Base class of every error musicrep raises on purpose."""


class AudioDecodeError(MusicrepError):
    """Audio bytes that cannot be turned into a waveform (corrupt, empty, not audio)."""


class ConfigError(MusicrepError, ValueError):
    """A setting or argument outside what the method allows."""


class TooShortError(MusicrepError):
    """Audio or features shorter than the minimum the computation needs."""
