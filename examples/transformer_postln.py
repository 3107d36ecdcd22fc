"""Zoo: a post-LN Transformer encoder (Flax NNX), 12 blocks.

Verdict gradjax gives: **healthy** at init, LayerNorm and residual blocks found from the
model. Why it is right: a post-LN block ends in ``LN(x + f(x))``; the LayerNorm divides the
backward signal by the standard deviation of ``x + f(x)`` while the skip and the branch add
theirs, and with unit-scale block outputs the two balance: ``||dL/da_l||`` stays within a
factor of a few across the 12 blocks (measured growth per block near 1, like the pre-LN
stack). Post-LN's known trouble (Xiong et al. 2020) is not in ``dL/da_l`` at init but in
the first optimiser steps: ``gj.diagnose(..., lr=...)`` probes the first step, and
``examples/prenorm_vs_postnorm_transformer.py`` shows the warm-up it calls for.

    gradjax diagnose --model examples.transformer_postln:make --out out
"""

from __future__ import annotations

from examples._transformer import Transformer
from examples._transformer import make as _make

__all__ = ["Transformer", "make"]


def make(*, depth: int = 12, width: int = 32, batch: int = 16, seed: int = 0):
    """``(model, None, (x, y))`` of the post-LN Transformer (see ``examples._transformer``)."""
    return _make(post_norm=True, depth=depth, width=width, batch=batch, seed=seed)
