"""Signal-propagation constants of SF-NFNet-F0, in one table with their sources.

A normaliser-free ResNet keeps activations near unit variance at initialisation by
bookkeeping instead of batch statistics (Brock, De & Smith, "Characterizing signal
propagation to close the performance gap in unnormalized ResNets", ICLR 2021; Brock et
al., "High-performance large-scale image recognition without normalization", ICML 2021):

- every activation is scaled so that it maps unit-variance Gaussian input to unit
  variance (`PHI_GAIN`, the constant of DeepMind's nfnets/base.py, also used by MULE);
- each residual branch is multiplied by `ALPHA`, so the variance of the running sum grows
  by α² per block, and the branch input is divided by the expected std, β = 1/sqrt(var).

The expected variance at the input of block k of a stage follows the released reference
(MULE, sxmp-mule 1.1.2, SPEC §2): stage 1 starts at 1; stages 2–4 start at 1 + α² (the
reference counts the fused transition as one update). Changing these numbers changes the
released model's function, so they are frozen here.
"""
from __future__ import annotations

import math

# 1.7015043497085571 · GELU(x) has unit variance for x ~ N(0, 1) (DeepMind nfnets).
PHI_GAIN = 1.7015043497085571
# Squeeze-excite output gain: sigmoid(·) ≈ 0.5 at init, so 2·s keeps the branch scale.
SE_GAIN = 2.0
# Residual branch scale α of every NF block (NFNet default, MULE `alpha`).
ALPHA = 0.2
# Weight standardisation floor on N·var (MULE/DeepMind use 1e-4).
WS_EPSILON = 1e-4
# Slice standardisation floor on the population std (SPEC §1).
SLICE_STD_FLOOR = 0.01


def block_expected_variance(*, stage: int, block: int, alpha: float = ALPHA) -> float:
    """Expected variance of the running residual sum entering `block` (0-based) of `stage` (1-based)."""
    updates_before_stage = 0 if stage == 1 else 1
    return 1.0 + (updates_before_stage + block) * alpha**2


def block_beta(*, stage: int, block: int, alpha: float = ALPHA) -> float:
    """β = 1/sqrt(expected variance): the factor applied to φ(x) at the block input."""
    return 1.0 / math.sqrt(block_expected_variance(stage=stage, block=block, alpha=alpha))


def stochastic_depth_rate(*, global_block: int, n_blocks: int, max_rate: float) -> float:
    """Drop rate of block `global_block` (0-based, counted over one pathway): max_rate·i/n."""
    return max_rate * global_block / n_blocks
