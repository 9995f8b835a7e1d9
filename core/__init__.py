"""musicrep: turn a music catalog into audio embeddings at catalog scale."""

__version__ = "0.1.0"
