"""Lyapunov spectrum by QR at depth 1000 vs the exact product + SVD.

A linear network with Gaussian weights (sigma_w = 1) has a closed-form Lyapunov spectrum
(:func:`gradjax.measure.lyapunov.gaussian_product_exponents`), so both methods are scored against
it:
  * ``gradjax``: :func:`gradjax.lyapunov_spectrum`, full spectrum, ``vmap`` over seeds, jitted;
  * ``exact_svd``: what a competent user writes without gradjax: the end-to-end Jacobian by
    ``jax.jacfwd`` of the forward pass (jitted, vmapped over seeds) and ``jnp.linalg.svd``,
    exponents ``log(sigma_i) / L``. In float32 the product keeps its largest singular values
    but every one below ~eps * sigma_max is round-off, so its accuracy collapses with depth.
Both are also run over a ladder of depths to find the largest depth at which the exact product
is still finite and resolves the whole spectrum.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import gradjax as gj
from gradjax.benchmarks import harness

NAME = "lyapunov"


def _config(quick: bool) -> dict:
    if quick:
        return {
            "depth": 100,
            "width": 32,
            "seeds": 2,
            "activation": "linear",
            "sigma_w": 1.0,
            "ladder": [5, 10, 25, 50, 100],
            "ladder_seeds": 2,
        }
    return {
        "depth": 1000,
        "width": 256,
        "seeds": 8,
        "activation": "linear",
        "sigma_w": 1.0,
        "ladder": [5, 10, 25, 50, 100],
        "ladder_seeds": 2,
    }


def _exact_exponents(net: gj.Net):
    def one(params, x):
        jac = jax.jacfwd(lambda v: net.forward(params, v).act[-1])(x)
        return jnp.log(jnp.linalg.svd(jac, compute_uv=False)) / net.cfg.depth

    return jax.jit(jax.vmap(one))


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = _config(quick)
    depth, width, seeds = cfg["depth"], cfg["width"], cfg["seeds"]
    net = gj.build(
        gj.NetConfig(depth=depth, width=width, activation="linear", sigma_w=cfg["sigma_w"])
    )
    keys = jax.random.split(jax.random.key(0), seeds)
    params = harness.block(jax.jit(jax.vmap(net.init))(keys))
    xs = jax.random.normal(jax.random.key(1), (seeds, width))
    theory = gj.lyapunov.gaussian_product_exponents(width, sigma_w=cfg["sigma_w"])
    mean, var = np.asarray(theory.mean, np.float64), np.asarray(theory.var_per_layer, np.float64)

    qr = jax.jit(jax.vmap(lambda p, x: gj.lyapunov_spectrum(net, p, x).exponents))
    qr_c = qr.lower(params, xs).compile()  # compile outside the timings
    out: dict = {}

    def run_qr():
        # Keep the last result: at full size one call is a long computation, not to repeat.
        out["qr"] = qr_c(params, xs)
        return out["qr"]

    t_qr = harness.time_fn(run_qr, repeats=3, warmup=0, budget_s=120)
    ex_qr = np.asarray(out["qr"], np.float64)
    err_qr = np.abs(ex_qr.mean(0) - mean)
    # The QR estimate is unbiased for Gaussian factors, so the error is pure sampling noise:
    # z = err / sqrt(var / (L seeds)) should look standard normal.
    z = err_qr / np.sqrt(var / (depth * seeds))

    exact = _exact_exponents(net)
    exact_c = exact.lower(params, xs).compile()
    t_exact = harness.time_fn(lambda: exact_c(params, xs), repeats=3, warmup=0, budget_s=120)
    ex_exact = np.asarray(exact_c(params, xs), np.float64)
    err_exact = np.abs(ex_exact.mean(0) - mean)

    # The depth ladder: where does the explicit product stop resolving the spectrum?
    ladder = []
    ladder_keys, ladder_xs = keys[: cfg["ladder_seeds"]], xs[: cfg["ladder_seeds"]]
    for d in cfg["ladder"]:
        sub = gj.build(net.cfg.replace(depth=d))
        sub_params = jax.vmap(sub.init)(ladder_keys)
        e = np.asarray(_exact_exponents(sub)(sub_params, ladder_xs), np.float64)
        q = np.asarray(
            jax.jit(
                jax.vmap(lambda p, x, sub=sub: gj.lyapunov_spectrum(sub, p, x, sweeps=2).exponents)
            )(sub_params, ladder_xs),
            np.float64,
        )
        finite = bool(np.all(np.isfinite(e)))
        # Refined QR gives the finite-depth log singular values themselves: the reference.
        gap = float(np.max(np.abs(np.sort(e, -1) - np.sort(q, -1)))) if finite else math.inf
        ladder.append(
            {"depth": d, "exact_all_finite": finite, "exact_vs_refined_qr_max_abs_err": gap}
        )
    finite_depths = [row["depth"] for row in ladder if row["exact_all_finite"]]
    # 0.05 per layer: what two refinement sweeps and float32 leave at the shallowest depths.
    resolved = [row["depth"] for row in ladder if row["exact_vs_refined_qr_max_abs_err"] < 0.05]

    return harness.record(
        NAME,
        config=cfg,
        timings={"gradjax": t_qr, "exact_svd": t_exact},
        ratios={"qr_time_over_exact_svd": t_qr["median"] / t_exact["median"]},
        accuracy={
            "max_abs_err_vs_closed_form": float(err_qr.max()),
            "median_abs_err_vs_closed_form": float(np.median(err_qr)),
            "max_abs_z_vs_closed_form": float(z.max()),
            "exact_svd_max_abs_err_vs_closed_form": float(err_exact.max()),
            "exact_svd_median_abs_err_vs_closed_form": float(np.median(err_exact)),
        },
        targets={"max_abs_err_vs_closed_form": "report", "qr_time_over_exact_svd": "report"},
        extra={
            "depth_ladder": ladder,
            "exact_largest_finite_depth": max(finite_depths) if finite_depths else None,
            "exact_largest_resolved_depth": max(resolved) if resolved else None,
        },
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run(quick=True)))
