"""A small NNX Transformer encoder, pre-LN or post-LN (shared by two zoo modules)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Block(nnx.Module):
    """Self-attention and MLP sub-layers with residual connections.

    Pre-LN: ``x + f(LN(x))``; post-LN (the original Transformer): ``LN(x + f(x))``.
    """

    def __init__(self, width: int, heads: int, *, post_norm: bool, rngs: nnx.Rngs):
        self.post_norm = post_norm
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=width, decode=False, rngs=rngs
        )
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 2 * width, rngs=rngs)
        self.down = nnx.Linear(2 * width, width, rngs=rngs)

    def __call__(self, x):
        if self.post_norm:
            x = self.ln1(x + self.attn(x))
            return self.ln2(x + self.down(nnx.gelu(self.up(x))))
        h = self.ln1(x)
        x = x + self.attn(h)
        return x + self.down(nnx.gelu(self.up(self.ln2(x))))


class Transformer(nnx.Module):
    """Token embedding (a linear map of each input row), blocks, final LN, linear head."""

    def __init__(
        self, *, depth: int, width: int, heads: int, features: int, post_norm: bool, rngs: nnx.Rngs
    ):
        self.embed = nnx.Linear(features, width, rngs=rngs)
        self.blocks = nnx.List(
            [Block(width, heads, post_norm=post_norm, rngs=rngs) for _ in range(depth)]
        )
        self.ln = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(jnp.mean(self.ln(h), axis=1))


def make(*, post_norm: bool, depth: int = 12, width: int = 32, batch: int = 16, seed: int = 0):
    """An NNX Transformer, ``None`` (NNX models carry their parameters) and one batch.

    Inputs are ``(batch, 8, 8)`` sequences of 8 tokens of 8 features; targets ``(batch, 1)``.
    """
    k_x, k_y = jax.random.split(jax.random.key(seed + 1))
    model = Transformer(
        depth=depth, width=width, heads=4, features=8, post_norm=post_norm, rngs=nnx.Rngs(seed)
    )
    x = jax.random.normal(k_x, (batch, 8, 8))
    y = jax.random.normal(k_y, (batch, 1))
    return model, None, (x, y)
