"""The projection head h(z) of SPEC §2: used by SimCLR (n = 1024) and supervised (n = K logits) training."""
from __future__ import annotations

import keras

from musicrep.model.sf_nfnet import SF_NFNET_VARIANTS


def projector(
    n_out: int,
    hidden: tuple[int, ...] = (4096, 4096, 4096),
    *,
    input_dim: int = SF_NFNET_VARIANTS["F0"].embedding_size,
    name: str = "projector",
) -> keras.Model:
    """Dense(h, ReLU, bias) for each h in `hidden`, then Dense(n_out, no bias, init N(0, 0.01)).

    The bias-free, small-init output layer follows SimCLR's reference head; for
    supervised training its outputs are logits (binary cross-entropy from logits).
    """
    inputs = keras.Input(shape=(input_dim,), name=f"{name}_input")
    x = inputs
    for index, width in enumerate(hidden, start=1):
        x = keras.layers.Dense(width, activation="relu", name=f"{name}_dense{index}")(x)
    outputs = keras.layers.Dense(
        n_out,
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(mean=0.0, stddev=0.01),
        name=f"{name}_out",
    )(x)
    return keras.Model(inputs, outputs, name=name)
