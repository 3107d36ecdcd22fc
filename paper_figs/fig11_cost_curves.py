"""Figure 11: what the diagnostics cost, as width and depth grow.

Exact per-layer spectra (every layer Jacobian materialised, then LAPACK's SVD) against the
matrix-free estimates (Hutchinson trace and Lanczos, JVP/VJP only): time vs width, time vs
depth, and XLA's working memory vs width, on log-log axes with the fitted exponents. The
measurements are those of the ``cost_curves`` benchmark (``benchmarks/bench_cost_curves.py``),
at sizes that fit the figure budget.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

NAME = "cost_curves"
TITLE = "Cost of exact vs matrix-free layer spectra as width and depth grow"
CLAIMS: tuple[str, ...] = ()
METHODS = (
    "One tanh network per size (sigma_w = 1), one input. Exact: all layer Jacobians by forward "
    "mode, then singular values (LAPACK). Matrix-free: Hutchinson (mean sigma^2) and Lanczos "
    "(sigma_max) through JVP/VJP only, fixed probes and steps. Both jit-compiled; time is the "
    "fastest (band: up to the median) of repeated calls with compilation excluded; memory is "
    "XLA's temporary-buffer size of the compiled call (it grows as N^2 for both: the exact "
    "Jacobians, and weight-sized buffers of the JVP/VJP products). Exponents: least-squares "
    "log-log slopes of the fastest time over the largest sizes (expected 3 and 2 in width, 1 "
    "in depth)."
)

_LABELS = {"exact": "exact Jacobian + SVD", "matrix_free": "matrix-free (JVP/VJP)"}


def config(quick: bool) -> dict[str, Any]:
    """Sizes of the width and depth scans (the benchmark's config keys)."""
    if quick:
        return {
            "activation": "tanh",
            "sigma_w": 1.0,
            "widths": {"exact": [32, 64, 128], "matrix_free": [32, 64, 128]},
            "depth_for_widths": 4,
            "depths": [2, 8],
            "width_for_depths": 64,
            "probes": 16,
            "lanczos_steps": 8,
            "fit_points": 2,
            "repeats": 3,
            "budget_s": 0.5,
        }
    return {
        "activation": "tanh",
        "sigma_w": 1.0,
        "widths": {"exact": [64, 128, 256, 512], "matrix_free": [64, 128, 256, 512, 1024]},
        "depth_for_widths": 4,
        "depths": [4, 8, 16, 32],
        "width_for_depths": 128,
        "probes": 32,
        "lanczos_steps": 16,
        "fit_points": 3,
        "repeats": 5,
        "budget_s": 2.0,
    }


def compute(cfg: dict[str, Any], progress: Callable[[str], None]) -> dict[str, Any]:
    """Runs the cost scans of :mod:`gradjax.benchmarks.bench_cost_curves`."""
    from gradjax.benchmarks.bench_cost_curves import METHODS as methods
    from gradjax.benchmarks.bench_cost_curves import cost_curves

    curves = cost_curves(cfg, progress)
    arrays = {}
    for scan in ("width", "depth"):
        for method in methods:
            for key, value in curves[scan][method].items():
                arrays[f"{scan}.{method}.{key}"] = np.asarray(value)
    numbers = {f"exponent_{name}": _finite(value) for name, value in curves["exponents"].items()}
    agreement = curves["agreement"]
    if agreement["widths"]:
        numbers["matrix_free_mean_sq_rel_err_max"] = _finite(max(agreement["mean_sq_rel_err"]))
        numbers["matrix_free_sigma_max_rel_err_max"] = _finite(max(agreement["sigma_max_rel_err"]))
        width = max(agreement["widths"])
        t = {
            m: float(arrays[f"width.{m}.median_s"][list(arrays[f"width.{m}.sizes"]).index(width)])
            for m in methods
        }
        numbers["speedup_at_largest_shared_width"] = _finite(t["exact"] / t["matrix_free"])
        numbers["largest_shared_width"] = int(width)
    return {"numbers": numbers, "arrays": arrays}


def _finite(value: float) -> float | str:
    value = float(value)
    return value if np.isfinite(value) else str(value)


def plot(cfg: dict[str, Any], result: dict[str, Any]):
    """Three log-log panels: time vs width, time vs depth, working memory vs width."""
    from matplotlib.ticker import LogLocator, NullFormatter

    from gradjax.utils.plotting import PALETTE, new_figure, styled

    @styled
    def draw():
        arrays, numbers = result["arrays"], result["numbers"]
        fig, axes = new_figure(1, 3, width=7.0, height=2.9)
        colors = {"exact": PALETTE[3], "matrix_free": PALETTE[0]}
        panels = (
            ("width", "min_s", "time_width", f"width N (depth {cfg['depth_for_widths']})"),
            ("depth", "min_s", "time_depth", f"depth L (width {cfg['width_for_depths']})"),
            ("width", "temp_bytes", "memory", f"width N (depth {cfg['depth_for_widths']})"),
        )
        for ax, (scan, key, kind, xlabel) in zip(axes, panels, strict=True):
            slopes = []
            for method in ("exact", "matrix_free"):
                x = arrays[f"{scan}.{method}.sizes"].astype(float)
                y = arrays[f"{scan}.{method}.{key}"].astype(float)
                if kind == "memory":
                    y = y / 2**20
                    exponent = numbers.get(f"exponent_memory_width_{method}")
                else:
                    # Line: the fastest repeat (what the slope is fitted to; noise only adds
                    # time); band: fastest to median repeat.
                    hi = arrays[f"{scan}.{method}.median_s"].astype(float)
                    ax.fill_between(x, y, hi, color=colors[method], alpha=0.2, linewidth=0)
                    exponent = numbers.get(f"exponent_{scan}_{method}")
                ax.plot(x, y, "o-", color=colors[method], label=_LABELS[method], markersize=3.5)
                if isinstance(exponent, float):
                    slopes.append((f"fit slope {exponent:.2f}", colors[method]))
            _reference_slopes(ax, scan, kind, arrays)
            for row, (text, color) in enumerate(slopes):
                ax.text(
                    0.97,
                    0.05 + 0.09 * row,
                    text,
                    color=color,
                    fontsize=7,
                    ha="right",
                    transform=ax.transAxes,
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
        axes[0].set_ylabel("fastest time per network (s)")
        axes[1].set_ylabel("fastest time per network (s)")
        axes[2].set_ylabel("XLA working memory (MiB)")
        axes[0].set_title("time vs width")
        axes[1].set_title("time vs depth")
        axes[2].set_title("memory vs width")
        handles, labels = axes[0].get_legend_handles_labels()
        handles.append(axes[0].lines[-1])
        labels.append("expected slope (guide)")
        fig.legend(handles, labels, loc="outside upper center", ncols=3, fontsize=7.5)
        return fig

    return draw()


def _reference_slopes(ax, scan: str, kind: str, arrays: dict[str, np.ndarray]) -> None:
    """Grey guide lines of the expected slopes, anchored at each curve's largest size."""
    expected = {
        ("width", "time_width"): {"exact": 3, "matrix_free": 2},
        ("depth", "time_depth"): {"exact": 1, "matrix_free": 1},
        ("width", "memory"): {"exact": 2, "matrix_free": 2},
    }[(scan, kind)]
    key = "temp_bytes" if kind == "memory" else "min_s"
    for method, slope in expected.items():
        x = arrays[f"{scan}.{method}.sizes"].astype(float)
        y = arrays[f"{scan}.{method}.{key}"].astype(float)
        if kind == "memory":
            y = y / 2**20
        if not (np.isfinite(y[-1]) and y[-1] > 0):
            continue
        guide = y[-1] * (x / x[-1]) ** slope
        ax.plot(x, guide, color="0.55", linestyle=":", linewidth=1.0)
        symbol = "N" if scan == "width" else "L"
        ax.annotate(
            f"${symbol}^{slope}$",
            (x[0], guide[0]),
            fontsize=7,
            color="0.4",
            textcoords="offset points",
            xytext=(4, -10),
            ha="left",
        )


def verdicts(cfg: dict[str, Any], numbers: dict[str, Any]) -> list[dict[str, Any]]:
    """No article claim rests on this figure: it documents cost, not a claim."""
    return []
