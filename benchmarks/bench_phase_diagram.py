"""A full phase diagram: 32 x 32 (sigma_w^2, sigma_b^2) x 4 seeds at depth 64, width 512.

Every one of the 4096 networks is initialised (base draws once per seed, scaled per grid
point), run forward, and its chi_1 measured matrix-free (:func:`gradjax.chi1_probe`:
Hutchinson estimates of every layer Jacobian's mean squared singular value through JVPs),
all by :func:`gradjax.sweep`. Reported: the wall time of the whole diagram (median of three
sweeps after a first one that compiles; the first call's time is kept too) and the fraction
of the machine's measured matmul peak that its arithmetic reaches.

The probe takes lazily scaled parameters (``Net.scale(..., lazy=True)``): the grid points of
a seed share its weights, and the scales multiply each layer's product instead of the
weights. A chunk's forward pass is then one (points x width) @ (width x width) product per
layer, and the Hutchinson JVPs ``W_l v`` (same probes at every scale of a seed) are shared
by the whole chunk. The engine sizes chunks from its memory model (a seed's fixed cost plus a
per-point cost) under its default 1 GiB budget.

FLOPs counted are the matmul FLOPs performed: per network, the forward pass and the
linearisation's forward pass (``2 * depth * 2 width^2``); per seed, ``probes`` shared JVPs per
layer (``depth * probes * 2 width^2``).
"""

from __future__ import annotations

import time

import numpy as np

import gradjax as gj
from gradjax.benchmarks import harness

NAME = "phase_diagram"


def _config(quick: bool) -> dict:
    if quick:
        return {
            "grid": 8,
            "seeds": 1,
            "depth": 16,
            "width": 128,
            "activation": "tanh",
            "probes": 4,
        }
    return {
        "grid": 32,
        "seeds": 4,
        "depth": 64,
        "width": 512,
        "activation": "tanh",
        "probes": 4,
    }


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = _config(quick)
    sw2 = np.geomspace(0.25, 6.0, cfg["grid"])
    sb2 = np.linspace(0.0, 1.0, cfg["grid"])
    net = gj.build(
        gj.NetConfig(depth=cfg["depth"], width=cfg["width"], activation=cfg["activation"])
    )
    probe = gj.chi1_probe(net, probes=cfg["probes"])
    kwargs = dict(progress=False, probe_name="chi1_probe")

    def diagram():
        return gj.sweep(
            net, probe, seeds=cfg["seeds"], sigma_w=np.sqrt(sw2), sigma_b=np.sqrt(sb2), **kwargs
        )

    # The first call compiles (the engine caches the jitted chunk function per (net, probe));
    # the timed calls reuse it.
    t0 = time.perf_counter()
    res = diagram()
    compile_s = time.perf_counter() - t0
    timing = harness.time_fn(lambda: diagram()["chi1"], repeats=3, warmup=0)
    wall = timing["median"]
    chunk = res.meta["chunk"]
    networks = cfg["seeds"] * cfg["grid"] ** 2
    layer_product = 2.0 * cfg["width"] ** 2 * cfg["depth"]
    flops = networks * 2 * layer_product + cfg["seeds"] * cfg["probes"] * layer_product
    peak = harness.matmul_peak_flops()
    chi = np.asarray(res["chi1"])
    theory = np.asarray(gj.theory.mean_field_grid(cfg["activation"], sw2, sb2).chi1)
    err = np.abs(np.log(np.median(chi, axis=0)) - np.log(theory))
    return harness.record(
        NAME,
        config={
            **cfg,
            "sigma_w2": [float(sw2[0]), float(sw2[-1])],
            "sigma_b2": [float(sb2[0]), float(sb2[-1])],
            "chunk": list(chunk),
        },
        timings={
            "gradjax": timing,
            "first_call_incl_compile": {
                "median": compile_s,
                "min": compile_s,
                "max": compile_s,
                "repeats": 1,
            },
        },
        ratios={"fraction_of_peak": flops / wall / peak},
        accuracy={
            "median_abs_log_chi1_vs_theory": float(np.median(err)),
            "p90_abs_log_chi1_vs_theory": float(np.percentile(err, 90)),
        },
        targets={"fraction_of_peak": "report"},
        extra={
            "wall_time_s": wall,
            "networks": networks,
            "matmul_flops": flops,
            "matmul_peak_flops": peak,
            "networks_per_s": networks / wall,
        },
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run()))
