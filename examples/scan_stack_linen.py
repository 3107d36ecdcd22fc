"""Zoo: an ``nn.scan`` stack of tanh layers (Flax Linen) in the chaotic phase, sigma_w^2 = 4.

The hidden layers are one scanned module (parameters with a leading layer axis); gradjax
finds the stack from its structure (no name to pass) and probes every layer of the scan.

Verdict gradjax gives: **exploding**. Why it is right: for tanh at ``sigma_w^2 = 4``,
``sigma_b = 0`` the variance map has a fixed point ``q* > 0`` with
``chi_1 = sigma_w^2 E[tanh'(sqrt(q*) z)^2] > 1`` (the ordered/chaotic boundary is
``sigma_w^2 = 1``), so ``||dL/da_l||`` grows geometrically towards the input. gradjax names
the critical init (sigma_w^2 = 1) as the one weight-scale target.

    gradjax diagnose --model examples.scan_stack_linen:make --out out
"""

from __future__ import annotations

import jax
from flax import linen as nn

SIGMA_W2 = 4.0


class Layer(nn.Module):
    """One tanh layer (the scanned body): ``(carry, _) -> (tanh(W carry + b), None)``."""

    width: int

    @nn.compact
    def __call__(self, h, _):
        init = nn.initializers.variance_scaling(SIGMA_W2, "fan_in", "normal")
        return jax.nn.tanh(nn.Dense(self.width, kernel_init=init)(h)), None


class ScanMLP(nn.Module):
    """Input layer, a scanned stack of ``depth`` tanh layers, linear readout."""

    depth: int = 32
    width: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width)(x)
        stack = nn.scan(
            Layer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.depth,
        )
        h, _ = stack(self.width, name="stack")(h, None)
        return nn.Dense(1)(h)


def make(*, depth: int = 32, width: int = 64, batch: int = 32, seed: int = 0):
    """``(model, variables, (x, y))``."""
    k_init, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    model = ScanMLP(depth=depth, width=width)
    x = jax.random.normal(k_x, (batch, 16))
    y = jax.random.normal(k_y, (batch, 1))
    return model, model.init(k_init, x), (x, y)
