"""musicrep: turn a music catalog into audio embeddings at catalog scale.

Importing the package hides TensorFlow's C++ start-up lines in this process and the ones
it starts (see `musicrep.native_logging`); it must happen before TensorFlow loads, and
every process running our code imports this package first.
"""
from musicrep import native_logging as _native_logging

__version__ = "0.1.0"

_native_logging.quiet()
