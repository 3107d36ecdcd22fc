"""Zoo: a deep tanh MLP with Dropout in train mode (Flax NNX), sigma_w = 0.5.

``depth`` hidden ``nnx.Linear`` layers of width 64 with weights ``N(0, sigma_w^2 / fan_in)``,
each followed by tanh and ``nnx.Dropout(0.1)``, in train mode (the dropout RNG count is
updated on gradjax's copy of the model, never across trace levels).

Verdict gradjax gives: **vanishing**. Why it is right: mean-field theory gives the backward
factor per layer ``chi_1 = sigma_w^2 E[tanh'(h)^2] / keep`` (dropout's ``1/keep`` rescale
enters squared, once); at ``sigma_w^2 = 0.25``, ``sigma_b = 0`` the fixed point is ``q* = 0``
and ``chi_1 = 0.25 / 0.9 = 0.28``, so ``||dL/da_l||`` shrinks by ``sqrt(0.28) = 0.53`` per
layer, a factor ~1e-7 over 24 layers. gradjax names the critical init for tanh
(sigma_w^2 = 1 without dropout).

    gradjax diagnose --model examples.mlp_dropout_nnx:make --out out
"""

from __future__ import annotations

import jax
from flax import nnx

SIGMA_W = 0.5
KEEP = 0.9


class DropoutMLP(nnx.Module):
    """Input layer, ``depth`` tanh layers with dropout, linear readout."""

    def __init__(self, *, depth: int, width: int, features: int, sigma_w: float, rngs):
        init = nnx.initializers.variance_scaling(sigma_w**2, "fan_in", "normal")
        self.inp = nnx.Linear(features, width, kernel_init=init, rngs=rngs)
        self.layers = nnx.List(
            [nnx.Linear(width, width, kernel_init=init, rngs=rngs) for _ in range(depth)]
        )
        self.drop = nnx.Dropout(1.0 - KEEP, rngs=rngs)
        self.out = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = self.drop(jax.nn.tanh(layer(h)))
        return self.out(h)


def make(*, depth: int = 24, width: int = 64, batch: int = 32, seed: int = 0):
    """``(model, None, (x, y))``; the model is in train mode (dropout active)."""
    k_x, k_y = jax.random.split(jax.random.key(seed + 1))
    model = DropoutMLP(depth=depth, width=width, features=16, sigma_w=SIGMA_W, rngs=nnx.Rngs(seed))
    model.train()
    x = jax.random.normal(k_x, (batch, 16))
    y = jax.random.normal(k_y, (batch, 1))
    return model, None, (x, y)
