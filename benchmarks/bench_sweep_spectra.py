"""Exact per-layer Jacobian spectra over seeds x sigma_w: gradjax's sweep vs the baselines.

Three timings in one run, on the same networks:
  * ``gradjax``: :func:`gradjax.sweep` with :func:`gradjax.measure.probes.spectrum_probe` (Jacobians
    in closed form, singular values by LAPACK, all vmapped and jitted), chunked as the engine
    chooses by default;
  * ``eager_loop``: what a competent user writes without gradjax: a Python loop over networks
    and layers, ``jax.jacrev`` per block and ``numpy.linalg.svd`` per Jacobian;
  * ``svd_alone``: the batched singular values of the same, precomputed Jacobians
    (:func:`gradjax.singular_values`, one LAPACK call on the whole batch, under gradjax's
    thread rule): the floor set by LAPACK, which gradjax should approach.

Compared settings, each reported: the same call jitted and run with the process's own BLAS
threads (``svd_alone_process_threads``, what a call inside a user's ``jax.jit`` gets, see
:mod:`gradjax.utils.threads`), and ``jnp.linalg.svd`` on the same batch (``svd_alone_jnp``; on a
CPU it can run the batch on one thread, see :mod:`gradjax.utils.lapack`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradjax as gj
from gradjax.benchmarks import harness

NAME = "sweep_spectra"


def workload(quick: bool) -> dict:
    """The sweep_spectra workload (also timed by bench_sweep_cli_probe)."""
    if quick:
        return {"depth": 8, "width": 32, "seeds": 2, "scales": 2, "activation": "tanh"}
    return {"depth": 32, "width": 128, "seeds": 8, "scales": 8, "activation": "tanh"}


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = workload(quick)
    net = gj.build(gj.NetConfig(depth=cfg["depth"], width=cfg["width"], activation="tanh"))
    sigma_w = np.linspace(0.5, 2.5, cfg["scales"])
    probe = gj.probes.spectrum_probe(net)

    def ours():
        return gj.sweep(net, probe, seeds=cfg["seeds"], sigma_w=sigma_w, progress=False)

    t_ours = harness.time_fn(ours, repeats=5, budget_s=60)
    result = ours()

    # The same Jacobians, materialised once, for the LAPACK floor and the eager baseline.
    root = jax.random.key(0)
    networks = []
    for s in range(cfg["seeds"]):
        init_key, probe_key = jax.random.split(jax.random.fold_in(root, s))
        base = net.init_base(init_key)
        x = jax.random.normal(probe_key, (cfg["width"],))
        for sw in sigma_w:
            networks.append((net.scale(base, sigma_w=sw, sigma_b=0.0), x))

    @jax.jit
    def all_jacobians(params_list, xs):
        jac = jax.vmap(lambda p, x: gj.layer_jacobians(net, p, x).all_layers())(params_list, xs)
        return jac

    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[p for p, _ in networks])
    xs = jnp.stack([x for _, x in networks])
    jacs = harness.block(all_jacobians(stacked, xs))
    t_svd = harness.time_fn(lambda: gj.singular_values(jacs), repeats=5, budget_s=60)
    svd = jax.jit(gj.singular_values)
    t_svd_process = harness.time_fn(lambda: svd(jacs), repeats=5, budget_s=60)
    svd_jnp = jax.jit(lambda j: jnp.linalg.svd(j, compute_uv=False))
    t_svd_jnp = harness.time_fn(lambda: svd_jnp(jacs), repeats=5, budget_s=60)

    def eager_loop():
        out = []
        for params, x in networks:
            a = x
            sigmas = []
            for index in range(cfg["depth"]):
                layer = net.layer_params(params, index)
                residual = index > 0
                f = lambda v, layer=layer, residual=residual: net.block(
                    layer, v, residual=residual
                )[2]
                j = jax.jacrev(f)(a)
                sigmas.append(np.linalg.svd(np.asarray(j), compute_uv=False))
                a = f(a)
            out.append(np.stack(sigmas))
        return np.stack(out)

    t_eager = harness.time_fn(eager_loop, repeats=1, warmup=0)
    eager = eager_loop() if quick else None
    s_max_ours = np.concatenate(
        [result["first.sigma_max"][..., None], result["hidden.sigma_max"]], -1
    ).reshape(-1, cfg["depth"])
    accuracy = {}
    if eager is not None:
        accuracy["max_rel_err_sigma_max_vs_eager"] = float(
            np.max(np.abs(s_max_ours - eager[..., 0]) / eager[..., 0])
        )
    s_max_svd = np.asarray(svd(jacs))[..., 0]
    accuracy["max_rel_err_sigma_max_vs_svd_alone"] = float(
        np.max(np.abs(s_max_ours - s_max_svd) / s_max_svd)
    )
    return harness.record(
        NAME,
        config={**cfg, "chunk": result.meta["chunk"]},
        timings={
            "gradjax": t_ours,
            "eager_loop": t_eager,
            "svd_alone": t_svd,
            "svd_alone_process_threads": t_svd_process,
            "svd_alone_jnp": t_svd_jnp,
        },
        ratios={
            "vs_eager_loop": t_eager["median"] / t_ours["median"],
            "over_svd_alone": t_ours["median"] / t_svd["median"],
            "svd_process_threads_over_rule": t_svd_process["median"] / t_svd["median"],
        },
        accuracy=accuracy,
        targets={"vs_eager_loop": ">= 15", "over_svd_alone": "<= 1.3"},
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run()))
