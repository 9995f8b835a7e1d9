"""The settings of snippet sampling (SPEC §3) a user chooses: read by the sampler
(`musicrep.model.data.SamplerConfig` holds one), by `musicrep pretrain` (generated
options) and by the run's config.json. No TensorFlow here, so a command line is checked
before TensorFlow loads.
"""
from __future__ import annotations

import argparse
import dataclasses

from musicrep.dataconfig import check, setting

SNIPPET_FRAMES = 300
POSITIVE_MAX_DISTANCE_S = 5.0
# SPEC §3: mixup gains ~ Beta(α = 5, β = 2) (see musicrep.model.mixup).
MIXUP_ALPHA = 5.0
MIXUP_BETA = 2.0


def parse_distance(value: str) -> float | None:
    """`--positive-max-distance-s`: seconds, or 'clip' (None: anywhere in the same clip)."""
    if value.lower() == "clip":
        return None
    try:
        return float(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected seconds or 'clip', got {value!r}") from error


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How snippets are drawn and mixed (see musicrep.model.data's module docstring)."""

    positive_max_distance_s: float | None = setting(
        POSITIVE_MAX_DISTANCE_S, above=0, parse=parse_distance, metavar="SECONDS|clip",
        help="SimCLR positives: snippet centres strictly closer than this many seconds; 'clip' "
        "(null in files) for two snippets anywhere in the same clip (AudioSet-like data)")
    snippet_frames: int = setting(SNIPPET_FRAMES, minimum=1,
                                  help="frames per snippet (300 = 3 s at 100 frames/s)")
    shuffle_buffer: int | None = setting(
        None, minimum=1, help="draws held for shuffling before batching (default max(2·batch, 256))")
    draws_per_track: float = setting(
        1.0, above=0,
        help="expected snippets drawn per track read (Poisson mean; 1 = sampling with replacement "
        "as the paper; 4-8 with a larger shuffle buffer feeds a fast GPU from long tracks)")
    cycle_length: int = setting(8, minimum=1, help="shards read at once by each input pipeline")
    mixup: bool = setting(False, help="mixup within each batch (SPEC §3; musicrep.model.mixup)")
    mixup_alpha: float = setting(MIXUP_ALPHA, above=0, help="α of the Beta distribution of the mixup gains")
    mixup_beta: float = setting(MIXUP_BETA, above=0, help="β of the Beta distribution of the mixup gains")

    def __post_init__(self) -> None:
        check(self)
