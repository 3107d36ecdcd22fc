"""Per-block Jacobian spectra of a user's Transformer: matrix-free against jacrev + SVD.

The model is a decoder-style pre-LN Transformer on token ids as a user writes it in Flax
Linen (``blocks`` blocks of causal self-attention and a GELU MLP, width ``width``). Both
sides measure the same maps ``a_{l-1} -> a_l`` between consecutive block outputs, one
example at a time:

* ``matrix_free``: :func:`gradjax.block_spectra` with its default Lanczos steps and probes,
  the maps read through the boundary (no hand-written maps);
* ``exact``: what a user would write without gradjax: each block's own module applied to the
  previous block's output (from ``capture_intermediates``), ``jax.jacrev`` of it for one
  example, and ``jnp.linalg.svd``, compiled once (every block has one structure).

Timed in one run, each warm (compiled before timing) and cold (compile included). Ratios:
``speedup_vs_exact`` (warm, target >= 10) and ``cold_speedup_vs_exact``; accuracy:
``sigma_max_rel_err`` (<= 0.02) and ``mean_sq_rel_err`` (<= 0.05), the largest over maps of
the relative error of the mean over examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

import gradjax as gj
from gradjax.benchmarks import harness

NAME = "block_spectra"


class Block(nn.Module):
    """Pre-LN decoder block: ``x + causal_attn(LN(x))`` then ``x + MLP(LN(x))``."""

    width: int
    heads: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm()(x)
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2], jnp.int32))
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h, mask=mask)
        h = nn.Dense(4 * self.width)(nn.LayerNorm()(x))
        return x + nn.Dense(self.width)(nn.gelu(h))


class DecoderLM(nn.Module):
    """Token and position embeddings, ``blocks`` pre-LN blocks, final LayerNorm, logits."""

    blocks: int = 12
    width: int = 256
    vocab: int = 512
    seq: int = 8

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(self.vocab, self.width)(tokens)
        h = h + self.param("pos", nn.initializers.normal(0.02), (self.seq, self.width))
        for _ in range(self.blocks):
            h = Block(self.width)(h)
        return nn.Dense(self.vocab)(nn.LayerNorm()(h))


def _config(quick: bool) -> dict:
    if quick:
        return {"blocks": 3, "width": 32, "seq": 4, "batch": 2, "vocab": 64, "repeats": 1}
    return {"blocks": 12, "width": 256, "seq": 8, "batch": 2, "vocab": 512, "repeats": 2}


def _exact_program(width: int):
    block = Block(width)

    @jax.jit
    def exact(params, a):
        jac = jax.jacrev(lambda h: block.apply({"params": params}, h[None])[0])(a)
        s = jnp.linalg.svd(jac.reshape(a.size, a.size), compute_uv=False)
        return s[0], jnp.mean(s**2)

    return exact


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = _config(quick)
    model = DecoderLM(cfg["blocks"], cfg["width"], cfg["vocab"], cfg["seq"])
    tokens = jax.random.randint(jax.random.key(1), (cfg["batch"], cfg["seq"]), 0, cfg["vocab"])
    variables = model.init(jax.random.key(0), tokens)
    boundary = gj.boundary.wrap(model, variables)
    _, seen = model.apply(variables, tokens, capture_intermediates=True)
    inputs = [seen["intermediates"][f"Block_{i}"]["__call__"][0] for i in range(cfg["blocks"])]
    params = variables["params"]

    def matrix_free():
        return gj.block_spectra(boundary, tokens)

    def matrix_free_cold():
        from gradjax.boundary.core import clear_discovered
        from gradjax.measure import block_spectra

        block_spectra._PROGRAMS.clear()
        clear_discovered()
        return matrix_free()

    exact_program = [None]

    def exact():
        out = []
        for layer in range(1, cfg["blocks"]):
            per_example = [
                exact_program[0](params[f"Block_{layer}"], inputs[layer - 1][i])
                for i in range(cfg["batch"])
            ]
            out.append(np.mean(np.asarray(jax.device_get(per_example), np.float64), axis=0))
        return np.asarray(out)

    def exact_cold():
        exact_program[0] = _exact_program(cfg["width"])
        return exact()

    repeats = cfg["repeats"]
    timings = {
        "matrix_free_cold": harness.time_fn(matrix_free_cold, repeats=1, warmup=0),
        "exact_cold": harness.time_fn(exact_cold, repeats=1, warmup=0),
        "matrix_free": harness.time_fn(matrix_free, repeats=repeats, warmup=1),
        "exact": harness.time_fn(exact, repeats=repeats, warmup=1),
    }
    found, truth = matrix_free(), exact()
    sigma_err = np.abs(found.sigma_max - truth[:, 0]) / truth[:, 0]
    mean_sq_err = np.abs(found.mean_sq - truth[:, 1]) / truth[:, 1]
    return harness.record(
        NAME,
        config=cfg,
        timings=timings,
        ratios={
            "speedup_vs_exact": timings["exact"]["median"] / timings["matrix_free"]["median"],
            "cold_speedup_vs_exact": timings["exact_cold"]["median"]
            / timings["matrix_free_cold"]["median"],
        },
        accuracy={
            "sigma_max_rel_err": float(sigma_err.max()),
            "mean_sq_rel_err": float(mean_sq_err.max()),
        },
        targets={
            "speedup_vs_exact": ">= 10",
            "sigma_max_rel_err": "<= 0.02",
            "mean_sq_rel_err": "<= 0.05",
        },
        extra={
            "maps": list(found.names),
            "per_example_size": cfg["seq"] * cfg["width"],
            "sigma_max": found.sigma_max.tolist(),
            "mean_sq": found.mean_sq.tolist(),
            "coupled": found.coupled,
        },
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run()))
