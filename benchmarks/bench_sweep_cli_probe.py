"""The probe behind ``gradjax sweep`` on the ``sweep_spectra`` workload, against its parts.

:func:`gradjax.measure.probes.layer_gradient_and_spectrum_probe` combines the gradient probe with
the
two-part spectrum probe (Jacobians per network, singular values in one batched ``finalize``
program per tile). Combining must cost no more than its parts, so the floor is their sum,
each timed alone in the same run:

  * ``gradjax``: :func:`gradjax.sweep` with the combined probe, chunked as the engine chooses;
  * ``gradient_probe_alone``: the same sweep with :func:`gradjax.measure.probes.gradient_probe`
  only;
  * ``svd_alone``: :func:`gradjax.singular_values` of the same, precomputed layer Jacobians
    (one LAPACK call on the whole batch): the floor of the spectrum part.

Ratio ``over_parts_floor`` = gradjax / (gradient probe alone + singular values alone).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import gradjax as gj
from gradjax.benchmarks import harness
from gradjax.benchmarks.bench_sweep_spectra import workload

NAME = "sweep_cli_probe"
BATCH = 16  # gradjax sweep's default --batch


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = workload(quick)  # the sweep_spectra workload
    net = gj.build(gj.NetConfig(depth=cfg["depth"], width=cfg["width"], activation="tanh"))
    sigma_w = np.linspace(0.5, 2.5, cfg["scales"])
    combined = gj.probes.layer_gradient_and_spectrum_probe(net, batch=BATCH)
    gradients = gj.probes.gradient_probe(net, batch=BATCH)
    kw = dict(seeds=cfg["seeds"], sigma_w=sigma_w, progress=False)

    def ours():
        return gj.sweep(net, combined, **kw)

    def gradients_alone():
        return gj.sweep(net, gradients, **kw)

    repeats = 3 if quick else 5
    t_ours = harness.time_fn(ours, repeats=repeats, budget_s=60)
    t_grad = harness.time_fn(gradients_alone, repeats=repeats, budget_s=60)
    result = ours()

    # The spectrum part's Jacobians, materialised once, at the inputs the combined probe
    # draws: its key is split between the parts in name order (gradients, spectra).
    root = jax.random.key(0)
    params, xs = [], []
    for s in range(cfg["seeds"]):
        init_key, probe_key = jax.random.split(jax.random.fold_in(root, s))
        spectra_key = jax.random.split(probe_key)[1]
        base = net.init_base(init_key)
        x = jax.random.normal(spectra_key, (net.cfg.input_dim,), net.dtype)
        for sw in sigma_w:
            params.append(net.scale(base, sigma_w=sw))
            xs.append(x)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *params)
    jacobians = jax.jit(jax.vmap(lambda p, x: gj.layer_jacobians(net, p, x).all_layers()))
    jacs = harness.block(jacobians(stacked, jnp.stack(xs)))
    t_svd = harness.time_fn(lambda: gj.singular_values(jacs), repeats=repeats, budget_s=60)

    s_max = np.asarray(gj.singular_values(jacs))[..., 0]
    s_max_ours = np.concatenate(
        [
            result["spectra.first.sigma_max"][..., None],
            result["spectra.hidden.sigma_max"],
        ],
        -1,
    ).reshape(-1, cfg["depth"])
    floor = t_grad["median"] + t_svd["median"]
    return harness.record(
        NAME,
        config={**cfg, "batch": BATCH, "chunk": result.meta["chunk"], "tile": result.meta["tile"]},
        timings={"gradjax": t_ours, "gradient_probe_alone": t_grad, "svd_alone": t_svd},
        ratios={"over_parts_floor": t_ours["median"] / floor},
        accuracy={
            "max_rel_err_sigma_max_vs_svd_alone": float(np.max(np.abs(s_max_ours - s_max) / s_max))
        },
        targets={"over_parts_floor": "<= 1.3"},
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run()))
