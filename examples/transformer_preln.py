"""Zoo: a pre-LN Transformer encoder (Flax NNX), 12 blocks.

Verdict gradjax gives: **healthy**, LayerNorm and residual blocks found from the model.
Why it is right: a pre-LN block is ``x + f(LN(x))``, so ``dL/dx`` is ``dL/dy`` plus the
branch's contribution: the residual stream carries the gradient to the first block with at
most a slow drift (measured growth per block near 1), which is why pre-LN stacks train
without a warm-up (Xiong et al. 2020).

    gradjax diagnose --model examples.transformer_preln:make --out out
"""

from __future__ import annotations

from examples._transformer import Transformer
from examples._transformer import make as _make

__all__ = ["Transformer", "make"]


def make(*, depth: int = 12, width: int = 32, batch: int = 16, seed: int = 0):
    """``(model, None, (x, y))`` of the pre-LN Transformer (see ``examples._transformer``)."""
    return _make(post_norm=False, depth=depth, width=width, batch=batch, seed=seed)
