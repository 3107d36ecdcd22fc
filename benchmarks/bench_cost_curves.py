"""Cost curves: time and XLA working memory of per-layer spectra vs width and depth.

Two ways to get the spectral numbers the chain-rule story needs (mean squared and largest
singular value of every layer Jacobian) for one network at one input:

  * ``exact``: materialise every layer Jacobian (:func:`gradjax.layer_jacobians`, forward
    mode) and take its singular values (LAPACK): O(depth * width^3) operations;
  * ``matrix_free``: :func:`gradjax.measure.matrix_free.layer_spectrum_estimates`, Hutchinson's
  trace
    estimator and Lanczos on J^T J through JVP/VJP only, with a fixed number of probes and
    steps: O(depth * width^2) operations (each JVP or VJP is one product with a width x width
    weight matrix).

Both are jit-compiled and timed with compilation excluded (median, min and max over
repeats). The exponents are least-squares slopes of log(fastest time) on log(width) (or
log(depth)) over the largest sizes, where fixed per-call overheads no longer dominate. There
is no baseline to beat: the exponents are the result, judged against the operation counts
above (3, 2, 1). Working memory is XLA's temporary-buffer size of the compiled call; it
grows as width^2 for both (the exact Jacobians; weight-sized buffers of the JVP/VJP
products), the matrix-free constant being smaller.

Limits: the matrix-free products read every weight matrix once per Lanczos step, so once
the weights leave the last-level cache the wall time is bound by memory bandwidth and its
slope in width exceeds the operation count's 2. Both methods are timed under gradjax's thread
rule for its batched LAPACK work (:mod:`gradjax.utils.threads`), as ``gradjax figures`` runs them.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradjax as gj
from gradjax.benchmarks import harness
from gradjax.measure.matrix_free import layer_spectrum_estimates
from gradjax.utils import threads
from gradjax.utils.fitting import log_slope

NAME = "cost_curves"
METHODS = ("exact", "matrix_free")


def config(quick: bool) -> dict[str, Any]:
    """Sizes of the two scans (JSON-safe)."""
    if quick:
        return {
            "activation": "tanh",
            "sigma_w": 1.0,
            "widths": {"exact": [64, 128, 256], "matrix_free": [64, 128, 256]},
            "depth_for_widths": 4,
            "depths": [4, 8, 16],
            "width_for_depths": 128,
            "probes": 16,
            "lanczos_steps": 8,
            "fit_points": 2,
            "repeats": 3,
            "budget_s": 1.0,
        }
    return {
        "activation": "tanh",
        "sigma_w": 1.0,
        "widths": {"exact": [128, 256, 512, 1024], "matrix_free": [256, 512, 1024, 2048]},
        "depth_for_widths": 4,
        "depths": [4, 8, 16, 32, 64],
        "width_for_depths": 256,
        "probes": 32,
        "lanczos_steps": 16,
        "fit_points": 3,
        "repeats": 9,
        "budget_s": 4.0,
    }


def _spectral_stages(method: str, net: gj.Net, cfg: dict[str, Any]) -> list:
    """The jitted stages of one method; chained, ``(params, x, key) -> (mean_sq, sigma_max)``.

    The exact method is two programs, as gradjax's spectrum probe runs it: the Jacobians, then
    their singular values. A LAPACK batch that starts its own program is spread over the
    cores every time; after the Jacobians in one program it ran on one core about half the
    time (see :mod:`gradjax.utils.lapack`), which made the timings bimodal.
    """
    if method == "exact":

        def jacobians(params, x, key):
            del key  # exact: nothing random
            return gj.layer_jacobians(net, params, x).all_layers()

        def summary(jac):
            s = gj.summarize_spectrum(gj.singular_values(jac))
            return s.mean_sq, s.sigma_max

        return [jax.jit(jacobians), jax.jit(summary)]

    def estimates(params, x, key):
        est = layer_spectrum_estimates(
            net, params, x, key=key, probes=cfg["probes"], lanczos_steps=cfg["lanczos_steps"]
        )
        return est.mean_sq, est.sigma_max

    return [jax.jit(estimates)]


def _network_inputs(net: gj.Net, width: int):
    """Parameters at the config's (sigma_w, sigma_b) and one N(0, 1) input.

    The unit-scale base draw comes from NumPy (N(0, 1/fan_in) weights, N(0, 1) biases, as
    ``net.init_base`` draws them) and :meth:`Net.scale` makes the network: drawing it with
    JAX would compile a random-number program for every new shape, seconds per size that
    have nothing to do with the costs measured here.
    """
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(net.init_base, jax.random.key(0))

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "W":
            return rng.standard_normal(leaf.shape).astype(leaf.dtype) / np.sqrt(leaf.shape[-1])
        if name == "b":
            return rng.standard_normal(leaf.shape).astype(leaf.dtype)
        return np.ones(leaf.shape, leaf.dtype)  # no other leaves in these plain networks

    base = jax.tree_util.tree_map_with_path(draw, shapes)
    params = net.scale(base, sigma_w=net.cfg.sigma_w, sigma_b=net.cfg.sigma_b)
    x = jnp.asarray(rng.standard_normal(width), net.dtype)
    return jax.block_until_ready(params), x


def measure(method: str, *, width: int, depth: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """Time, XLA memory and the spectral numbers of one method on one network.

    Args:
      method: ``"exact"`` or ``"matrix_free"``.
      width: hidden width (and input dimension).
      depth: number of blocks.
      cfg: the benchmark config (activation, sigma_w, probes, steps, repeats, budget).

    Returns:
      ``{"time": time_fn stats, "temp_bytes", "peak_bytes", "mean_sq", "sigma_max"}``;
      ``peak_bytes`` is XLA's arguments + outputs + temporaries of the largest compiled
      stage, ``temp_bytes`` the temporaries of all stages plus what one stage hands to the
      next (the working memory beyond the weights).
    """
    net = gj.build(
        gj.NetConfig(depth=depth, width=width, activation=cfg["activation"], sigma_w=cfg["sigma_w"])
    )
    params, x = _network_inputs(net, width)
    key = jax.random.key(2)
    stages = _spectral_stages(method, net, cfg)
    args, compiled, temp, peak = (params, x, key), [], 0, 0
    for i, stage in enumerate(stages):
        program = stage.lower(*args).compile()
        stats = program.memory_analysis()
        out = jax.eval_shape(stage, *args)
        if stats is None or temp < 0:
            temp = peak = -1
        else:
            temp += int(stats.temp_size_in_bytes)
            if i + 1 < len(stages):  # handed on to the next stage: working memory too
                temp += sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(out))
            total = stats.temp_size_in_bytes + stats.argument_size_in_bytes
            peak = max(peak, int(total + stats.output_size_in_bytes))
        compiled.append(program)
        args = (out,)

    def run():
        result = compiled[0](params, x, key)
        for program in compiled[1:]:
            result = program(result)
        return result

    timing = harness.time_fn(
        lambda: threads.run_batched(run), repeats=cfg["repeats"], budget_s=cfg["budget_s"]
    )
    mean_sq, sigma_max = (np.asarray(v) for v in run())
    return {
        "time": timing,
        "temp_bytes": temp,
        "peak_bytes": peak,
        "mean_sq": mean_sq,
        "sigma_max": sigma_max,
    }


def fit_exponent(sizes: Any, values: Any, *, last: int | None = None) -> float:
    """Least-squares slope of ``log(values)`` on ``log(sizes)`` over the ``last`` largest sizes.

    Args:
      sizes: the scanned sizes (increasing).
      values: the measured costs (positive; non-finite or non-positive entries are dropped).
      last: use only the last ``last`` points (default all).

    Returns:
      The slope (``nan`` with fewer than two usable points).
    """
    sizes, values = np.asarray(sizes, float), np.asarray(values, float)
    if last is not None:
        sizes, values = sizes[-last:], values[-last:]
    return float(log_slope(sizes, values, log_x=True))


def cost_curves(cfg: dict[str, Any], progress=None) -> dict[str, Any]:
    """Runs both scans; returns per-method arrays and the fitted exponents.

    Args:
      cfg: :func:`config`'s dict.
      progress: optional ``progress(message)``.

    Returns:
      ``{"width": {method: {"sizes", "median_s", "min_s", "max_s", "temp_bytes",
      "peak_bytes"}}, "depth": {...}, "exponents": {...}, "agreement": {...}}``.
    """
    say = progress or (lambda message: None)
    out: dict[str, Any] = {"width": {}, "depth": {}}
    spectra: dict[tuple[str, int], dict[str, Any]] = {}
    for scan, sizes_of, fixed in (
        ("width", lambda m: cfg["widths"][m], cfg["depth_for_widths"]),
        ("depth", lambda m: cfg["depths"], cfg["width_for_depths"]),
    ):
        for method in METHODS:
            rows = []
            for size in sizes_of(method):
                width, depth = (size, fixed) if scan == "width" else (fixed, size)
                say(f"{method}: width {width}, depth {depth}")
                m = measure(method, width=width, depth=depth, cfg=cfg)
                rows.append(m)
                if scan == "width":
                    spectra[(method, width)] = m
            out[scan][method] = {
                "sizes": np.asarray(sizes_of(method)),
                "median_s": np.array([r["time"]["median"] for r in rows]),
                "min_s": np.array([r["time"]["min"] for r in rows]),
                "max_s": np.array([r["time"]["max"] for r in rows]),
                "repeats": np.array([r["time"]["repeats"] for r in rows]),
                "temp_bytes": np.array([r["temp_bytes"] for r in rows], float),
                "peak_bytes": np.array([r["peak_bytes"] for r in rows], float),
            }
    k = cfg["fit_points"]
    exponents = {}
    for method in METHODS:
        w, d = out["width"][method], out["depth"][method]
        # Fitted on the fastest repeat: timing noise on a shared machine only ever adds time,
        # so the minimum tracks the operation count best (the medians are recorded too).
        exponents[f"width_{method}"] = fit_exponent(w["sizes"], w["min_s"], last=k)
        exponents[f"depth_{method}"] = fit_exponent(d["sizes"], d["min_s"], last=k)
        exponents[f"memory_width_{method}"] = fit_exponent(w["sizes"], w["temp_bytes"], last=k)
    # The matrix-free numbers against the exact ones where both ran: cost means nothing if the
    # cheap answer is wrong.
    agreement = {"mean_sq_rel_err": [], "sigma_max_rel_err": [], "widths": []}
    for width in cfg["widths"]["exact"]:
        if ("matrix_free", width) not in spectra:
            continue
        ex, mf = spectra[("exact", width)], spectra[("matrix_free", width)]
        agreement["widths"].append(width)
        for name in ("mean_sq", "sigma_max"):
            rel = np.abs(mf[name] - ex[name]) / np.abs(ex[name])
            agreement[f"{name}_rel_err"].append(float(np.median(rel)))
    out["exponents"] = exponents
    out["agreement"] = agreement
    return out


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = config(quick)
    curves = cost_curves(cfg)
    e = curves["exponents"]
    timings = {}
    for scan in ("width", "depth"):
        for method in METHODS:
            c = curves[scan][method]
            for i, size in enumerate(c["sizes"]):
                timings[f"{method}_{scan}_{int(size)}"] = {
                    "median": float(c["median_s"][i]),
                    "min": float(c["min_s"][i]),
                    "max": float(c["max_s"][i]),
                    "repeats": int(c["repeats"][i]),
                }
    shared = max(curves["agreement"]["widths"], default=None)
    ratios = {
        "exponent_width_exact": e["width_exact"],
        "exponent_width_matrix_free": e["width_matrix_free"],
        # Depth multiplies every layer's cost alike; the exact method's is the headline.
        "exponent_depth": e["depth_exact"],
        "exponent_depth_matrix_free": e["depth_matrix_free"],
        "memory_exponent_width_exact": e["memory_width_exact"],
        "memory_exponent_width_matrix_free": e["memory_width_matrix_free"],
    }
    if shared is not None:
        ex = curves["width"]["exact"]
        mf = curves["width"]["matrix_free"]
        t_ex = float(ex["median_s"][list(ex["sizes"]).index(shared)])
        t_mf = float(mf["median_s"][list(mf["sizes"]).index(shared)])
        ratios[f"matrix_free_speedup_at_width_{shared}"] = t_ex / t_mf
    agreement = curves["agreement"]
    accuracy = {
        "matrix_free_mean_sq_median_rel_err": max(agreement["mean_sq_rel_err"], default=math.nan),
        "matrix_free_sigma_max_median_rel_err": max(
            agreement["sigma_max_rel_err"], default=math.nan
        ),
    }
    memory = {
        scan: {
            method: {
                "sizes": [int(v) for v in curves[scan][method]["sizes"]],
                "temp_bytes": [int(v) for v in curves[scan][method]["temp_bytes"]],
                "peak_bytes": [int(v) for v in curves[scan][method]["peak_bytes"]],
            }
            for method in METHODS
        }
        for scan in ("width", "depth")
    }
    return harness.record(
        NAME,
        config=cfg,
        timings=timings,
        ratios=ratios,
        accuracy=accuracy,
        targets={
            "exponent_width_exact": "~ 3",
            "exponent_width_matrix_free": "~ 2",
            "exponent_depth": "~ 1",
        },
        extra={
            "memory_bytes": memory,
        },
    )


if __name__ == "__main__":
    import sys

    from gradjax.utils.files import dumps_json

    print(dumps_json(run(quick="--quick" in sys.argv)))
