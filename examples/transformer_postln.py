"""Zoo: a post-LN Transformer encoder (Flax NNX), 12 blocks.

Verdict gradjax gives: **vanishing** towards the input, LayerNorm and residual blocks found.
Why it is right: a post-LN block ends in ``LN(x + f(x))``; the sum has about twice the
variance of ``x``, so each LayerNorm divides the backward signal by about ``sqrt(2)`` per
sub-layer: ``||dL/da_l||`` shrinks geometrically from the output block to the first one
(Xiong et al. 2020), the reason post-LN stacks need a warm-up. gradjax suggests the pre-LN
placement or a warm-up (it finds the norms and the skips, so it does not suggest adding them).

    gradjax diagnose --model examples.transformer_postln:make --out out
"""

from __future__ import annotations

from examples._transformer import Transformer
from examples._transformer import make as _make

__all__ = ["Transformer", "make"]


def make(*, depth: int = 12, width: int = 32, batch: int = 16, seed: int = 0):
    """``(model, None, (x, y))`` of the post-LN Transformer (see ``examples._transformer``)."""
    return _make(post_norm=True, depth=depth, width=width, batch=batch, seed=seed)
