"""A full phase diagram: 32 x 32 (sigma_w^2, sigma_b^2) x 4 seeds at depth 64, width 512.

Every one of the 4096 networks is initialised (base draws once per seed, rescaled per grid
point), run forward, and its chi_1 measured matrix-free (:func:`gradjax.chi1_probe`:
Hutchinson estimates of every layer Jacobian's mean squared singular value through JVPs),
all by :func:`gradjax.sweep`. Reported: the wall time of the whole diagram (compilation
excluded: a first sweep over one chunk's worth of points compiles the same chunk function)
and the fraction of the machine's measured matmul peak that the useful arithmetic reaches.

Useful FLOPs per network: the forward pass (one width x width product per layer), the
linearisation's forward pass (another) and ``probes`` Jacobian-vector products per layer:
``depth * 2 * width^2 * (2 + probes)``. A single input per network makes these
matrix-vector products, bound by memory bandwidth rather than arithmetic, so a small
fraction of peak is expected; it is reported, not targeted.

Limits: inside the sweep every grid point materialises its own rescaled copy of the weights
(depth * width^2 floats, 64 MB here) and the vmapped layer scan moves them again, so a
network costs far more than its arithmetic: on the shared 2-core development machine the
vmapped forward pass alone took 35 ms per network against 1.5 ms for one jitted network, and
the probe 0.08-0.28 s per network in all, i.e. 5-20 minutes for the full diagram.
"""

from __future__ import annotations

import time

import numpy as np

import gradjax as gj
from benchmarks import harness

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
            "points_per_chunk": 8,
        }
    return {
        "grid": 32,
        "seeds": 4,
        "depth": 64,
        "width": 512,
        "activation": "tanh",
        "probes": 4,
        "points_per_chunk": 16,
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
    # One seed and `points` grid points per compiled chunk: each point holds its own rescaled
    # copy of the weights (depth * width^2 floats), which sets the chunk's memory.
    chunk = (1, cfg["points_per_chunk"])
    kwargs = dict(progress=False, chunk=chunk, probe_name="chi1_probe")

    # Compile on a warm-up sweep of exactly one chunk: the engine pads every chunk to the
    # same shape and caches the jitted function per (net, probe), so the timed sweep reuses it.
    t0 = time.perf_counter()
    gj.sweep(
        net, probe, seeds=1, sigma_w=np.sqrt(sw2[: chunk[1]]), sigma_b=np.sqrt(sb2[:1]), **kwargs
    )
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = gj.sweep(
        net, probe, seeds=cfg["seeds"], sigma_w=np.sqrt(sw2), sigma_b=np.sqrt(sb2), **kwargs
    )
    wall = time.perf_counter() - t0
    networks = cfg["seeds"] * cfg["grid"] ** 2
    flops = networks * cfg["depth"] * 2.0 * cfg["width"] ** 2 * (2 + cfg["probes"])
    peak = harness.matmul_peak_flops()
    chi = np.asarray(res["chi1"])
    theory = np.asarray(gj.mean_field_grid(cfg["activation"], sw2, sb2).chi1)
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
            "gradjax": {"median": wall, "min": wall, "max": wall, "repeats": 1},
            "warmup_incl_compile": {
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
            "useful_flops": flops,
            "matmul_peak_flops": peak,
            "networks_per_s": networks / wall,
        },
    )


if __name__ == "__main__":
    import json

    print(json.dumps(harness._json_safe(run()), indent=2))
