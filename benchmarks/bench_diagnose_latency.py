"""Latency of :func:`gradjax.diagnose` on a user's Transformer, cold and warm.

The model is a Flax Linen pre-LN Transformer encoder (``blocks`` blocks of self-attention
and a GELU MLP, width ``width``) on a batch of ``batch`` sequences, as a user writes it (no
``perturb`` calls). Timed in one run:

* ``grad_compile``: what a competent user pays for one gradient of the same loss: a fresh
  ``jax.jit(jax.grad(loss))`` compiled and run once;
* ``cold``: the first ``gj.diagnose`` call on the model (gradjax's caches cleared first);
* ``warm``: a second call on the same model and shapes (the compiled program is reused).

Ratios: ``cold_over_grad_compile`` (target <= 2.0) and ``warm_over_cold`` (<= 0.1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

import gradjax as gj
from gradjax.benchmarks import harness

NAME = "diagnose_latency"


class Block(nn.Module):
    """Pre-LN block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``."""

    width: int
    heads: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
        h = nn.Dense(4 * self.width)(nn.LayerNorm()(x))
        return x + nn.Dense(self.width)(nn.gelu(h))


class Transformer(nn.Module):
    """Token embedding, ``blocks`` pre-LN blocks, final LayerNorm, mean-pooled linear head."""

    blocks: int = 12
    width: int = 64

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.width)(x)
        for _ in range(self.blocks):
            h = Block(self.width)(h)
        return nn.Dense(1)(jnp.mean(nn.LayerNorm()(h), axis=1))


def _config(quick: bool) -> dict:
    if quick:
        return {"blocks": 3, "width": 16, "batch": 8, "seq": 8, "features": 8, "repeats": 1}
    return {"blocks": 12, "width": 64, "batch": 16, "seq": 16, "features": 16, "repeats": 3}


def _problem(cfg: dict):
    k_init, k_x, k_y = jax.random.split(jax.random.key(0), 3)
    model = Transformer(blocks=cfg["blocks"], width=cfg["width"])
    x = jax.random.normal(k_x, (cfg["batch"], cfg["seq"], cfg["features"]))
    y = jax.random.normal(k_y, (cfg["batch"], 1))
    return model, model.init(k_init, x), x, y


def _clear_gradjax_caches() -> None:
    from gradjax.diagnosis.measurement import clear_caches

    clear_caches()


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = _config(quick)
    model, variables, x, y = _problem(cfg)

    def loss(params):
        return gj.mse_loss(model.apply({"params": params}, x), y)

    def grad_compile():
        # A fresh jit each time: compile and run, as a user's first gradient.
        return jax.jit(jax.grad(loss))(variables["params"])

    def cold():
        _clear_gradjax_caches()
        return gj.diagnose(model, variables, (x, y), "mse").loss

    def warm():
        return gj.diagnose(model, variables, (x, y), "mse").loss

    repeats = cfg["repeats"]
    t_grad = harness.time_fn(grad_compile, repeats=repeats, warmup=0)
    t_cold = harness.time_fn(cold, repeats=repeats, warmup=0)
    t_warm = harness.time_fn(warm, repeats=max(3, repeats), warmup=1)
    report = gj.diagnose(model, variables, (x, y), "mse")
    # Accuracy: the diagnosed loss against the plain forward pass.
    plain = float(loss(variables["params"]))
    return harness.record(
        NAME,
        config=cfg,
        timings={"grad_compile": t_grad, "cold": t_cold, "warm": t_warm},
        ratios={
            "cold_over_grad_compile": t_cold["median"] / t_grad["median"],
            "warm_over_cold": t_warm["median"] / t_cold["median"],
        },
        accuracy={"loss_abs_err": abs(report.loss - plain)},
        targets={"cold_over_grad_compile": "<= 2.0", "warm_over_cold": "<= 0.1"},
        extra={"verdict": report.verdict, "blocks_found": len(report.activation_names)},
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run()))
