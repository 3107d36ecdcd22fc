"""Phase diagram: empirical chi_1 over (sigma_w^2, sigma_b^2) with the theoretical critical line.

chi_1 is measured on finite networks as the mean squared singular value of their layer
Jacobians (matrix-free Hutchinson estimates, :func:`gradjax.chi1_probe`, averaged over the
layers past the first quarter), swept with :func:`gradjax.sweep` over sigma_w and sigma_b (the
engine's axes are the standard deviations; the grid is built in the variances). The
mean-field critical line chi_1 = 1 (:func:`gradjax.critical_line`) is drawn over it, with the
empirical chi_1 = 1 contour. Sigmoid gets its own panel: its critical line exists, far out at
sigma_w^2 ~ 100.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

NAME = "phase_diagram"
TITLE = "Phase diagram of chi_1 over (sigma_w^2, sigma_b^2): measured vs mean-field critical line"
CLAIMS = ("C4", "C5")
METHODS = (
    "Networks (width N, depth L) on a log-spaced sigma_w^2 x linear sigma_b^2 grid, several "
    "seeds, swept with gradjax.sweep and gradjax.chi1_probe (Hutchinson estimates of "
    "tr(J_l^T J_l)/N through JVPs, geometric mean over layers l > L/4). Theory: "
    "gradjax.theory.mean_field_grid on the same grid and gradjax.critical_line (chi_1 = 1 by "
    "scan + bisection). Agreement is the median |ln chi_1(measured) - ln chi_1(theory)| and "
    "the relative gap between the measured and theoretical critical sigma_w^2 per sigma_b^2."
)

PANELS = {
    "tanh": {"sigma_w2": (0.25, 6.0), "sigma_b2": (0.0, 1.0)},
    "sigmoid": {"sigma_w2": (4.0, 600.0), "sigma_b2": (0.0, 4.0)},
}


def config(quick: bool) -> dict:
    """Grid and network sizes (quick: coarser grid, narrower nets, one seed)."""
    if quick:
        return {"grid": 8, "width": 128, "depth": 16, "seeds": 1, "probes": 4}
    return {"grid": 32, "width": 512, "depth": 64, "seeds": 4, "probes": 4}


def _grids(act: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    (w0, w1), (b0, b1) = PANELS[act]["sigma_w2"], PANELS[act]["sigma_b2"]
    return np.geomspace(w0, w1, n), np.linspace(b0, b1, n)


def _crossing(sw2: np.ndarray, chi: np.ndarray) -> np.ndarray:
    """Per sigma_b^2 column, the sigma_w^2 where ln chi_1 first crosses 0 (log-interpolated)."""
    out = np.full(chi.shape[1], np.nan)
    logw, logc = np.log(sw2), np.log(chi)
    for j in range(chi.shape[1]):
        col = logc[:, j]
        idx = np.nonzero((col[:-1] < 0) & (col[1:] >= 0))[0]
        if idx.size:
            i = idx[0]
            t = -col[i] / (col[i + 1] - col[i])
            out[j] = math.exp(logw[i] + t * (logw[i + 1] - logw[i]))
    return out


def compute(cfg: dict, progress: Callable[[str], None]) -> dict:
    """Sweeps each activation over its grid; theory on the same grid and the critical line."""
    import gradjax as gj

    numbers: dict = {}
    arrays: dict = {}
    for act in PANELS:
        sw2, sb2 = _grids(act, cfg["grid"])
        progress(f"{act}: theory")
        theory = np.asarray(gj.theory.mean_field_grid(act, sw2, sb2).chi1, dtype=np.float64)
        fine_b = np.linspace(sb2[0], sb2[-1], 4 * cfg["grid"])
        line = gj.critical_line(act, fine_b)
        progress(f"{act}: sweep of {sw2.size * sb2.size * cfg['seeds']} networks")
        net = gj.build(gj.NetConfig(depth=cfg["depth"], width=cfg["width"], activation=act))
        res = gj.sweep(
            net,
            gj.chi1_probe(net, probes=cfg["probes"]),
            seeds=cfg["seeds"],
            sigma_w=np.sqrt(sw2),
            sigma_b=np.sqrt(sb2),
            progress=False,
            probe_name="chi1_probe",
        )
        measured = np.exp(np.median(np.log(res["chi1"]), axis=0))  # (sigma_w, sigma_b)
        arrays[f"{act}_sigma_w2"] = sw2
        arrays[f"{act}_sigma_b2"] = sb2
        arrays[f"{act}_measured"] = measured
        arrays[f"{act}_theory"] = theory
        arrays[f"{act}_line_b2"] = fine_b
        arrays[f"{act}_line_w2"] = np.asarray(line.sigma_w2, dtype=np.float64)
        finite = np.isfinite(measured) & (measured > 0)
        dlog = np.abs(np.log(measured[finite]) - np.log(theory[finite]))
        numbers[f"{act}_median_abs_log_chi1_err"] = float(np.median(dlog))
        numbers[f"{act}_p90_abs_log_chi1_err"] = float(np.percentile(dlog, 90))
        emp_crit = _crossing(sw2, measured)
        th_crit = np.interp(sb2, fine_b, arrays[f"{act}_line_w2"])
        gap = np.abs(emp_crit / th_crit - 1)
        numbers[f"{act}_critical_rel_gap_max"] = float(np.nanmax(gap))
        numbers[f"{act}_critical_rel_gap_median"] = float(np.nanmedian(gap))
        numbers[f"{act}_critical_sigma_w2_at_zero_bias"] = float(
            gj.theory.critical_sigma_w2(act, float(sb2[0]))
        )
        numbers[f"{act}_measured_critical_sigma_w2_at_zero_bias"] = (
            float(emp_crit[0]) if np.isfinite(emp_crit[0]) else "nan"
        )
    return {"numbers": numbers, "arrays": arrays}


def plot(cfg: dict, result: dict):
    """Two heat maps of ln chi_1 (measured) with the theoretical and measured chi_1 = 1 lines."""
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import NullFormatter

    from gradjax.utils import plotting

    @plotting.styled
    def draw():
        arrays, numbers = result["arrays"], result["numbers"]
        fig, axes = plotting.new_figure(1, 2, width=7.0, height=3.0)
        for ax, act in zip(axes, PANELS, strict=True):
            sw2, sb2 = arrays[f"{act}_sigma_w2"], arrays[f"{act}_sigma_b2"]
            logchi = np.log(arrays[f"{act}_measured"])
            lim = max(float(np.nanmax(np.abs(logchi))), 1e-3)
            mesh = ax.pcolormesh(
                sw2,
                sb2,
                logchi.T,
                shading="nearest",
                cmap="RdBu_r",
                norm=TwoSlopeNorm(0.0, -lim, lim),
                rasterized=True,
            )
            ax.plot(
                arrays[f"{act}_line_w2"],
                arrays[f"{act}_line_b2"],
                color="k",
                lw=1.6,
                label=r"theory $\chi_1 = 1$",
            )
            ax.contour(
                sw2,
                sb2,
                logchi.T,
                levels=[0.0],
                colors=[plotting.PALETTE[1]],
                linestyles="--",
                linewidths=1.4,
            )
            ax.plot([], [], color=plotting.PALETTE[1], ls="--", label=r"measured $\chi_1 = 1$")
            ax.set_xscale("log")
            ax.set_xlim(sw2[0], sw2[-1])
            ticks = [t for t in (0.25, 0.5, 1, 2, 4, 10, 30, 100, 300) if sw2[0] <= t <= sw2[-1]]
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylim(sb2[0], sb2[-1])
            ax.set_xlabel(r"weight variance $\sigma_w^2$")
            ax.set_ylabel(r"bias variance $\sigma_b^2$")
            crit0 = numbers[f"{act}_critical_sigma_w2_at_zero_bias"]
            ax.set_title(f"{act}: critical $\\sigma_w^2$ = {crit0:.3g} at $\\sigma_b^2$=0")
            ax.text(0.03, 0.04, "ordered\n(vanishing)", transform=ax.transAxes, fontsize=7)
            ax.text(
                0.97, 0.04, "chaotic\n(exploding)", transform=ax.transAxes, fontsize=7, ha="right"
            )
            ax.legend(loc="upper left", fontsize=6.5, frameon=True)
            ax.grid(False)
            cb = fig.colorbar(mesh, ax=ax, shrink=0.9)
            cb.set_label(r"measured $\ln \chi_1$ (per layer)")
        fig.suptitle(
            f"Measured $\\chi_1$ (width {cfg['width']}, depth {cfg['depth']}, median of "
            f"{cfg['seeds']} seed(s)) with the mean-field critical line",
            fontsize=8,
        )
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    """C4: measured chi_1 follows theory and changes sign of ln chi_1 at the critical line.
    C5: sigmoid has a critical line too (its location, measured and predicted)."""
    tanh_err = numbers["tanh_median_abs_log_chi1_err"]
    tanh_gap = numbers["tanh_critical_rel_gap_median"]
    tanh_gap_max = numbers["tanh_critical_rel_gap_max"]
    c4 = "confirmed" if tanh_err < 0.05 and tanh_gap < 0.1 else "nuanced"
    sig_pred = numbers["sigmoid_critical_sigma_w2_at_zero_bias"]
    sig_meas = numbers["sigmoid_measured_critical_sigma_w2_at_zero_bias"]
    sig_found = isinstance(sig_meas, float) and abs(sig_meas / sig_pred - 1) < 0.2
    meas_text = f"{sig_meas:.1f}" if isinstance(sig_meas, float) else "no crossing in range"
    c5 = "nuanced" if sig_found else "confirmed"
    return [
        {
            "claim": "C4",
            "verdict": c4,
            "summary": (
                f"Across the tanh grid the measured per-layer factor chi_1 matches mean-field "
                f"theory with median |ln ratio| {tanh_err:.3f}; the measured chi_1 = 1 contour "
                f"is a median {100 * tanh_gap:.1f}% (at most {100 * tanh_gap_max:.0f}%, near "
                f"sigma_b = 0 where q* -> 0 is approached only as 1/depth) from the "
                f"theoretical critical sigma_w^2."
            ),
            "numbers": [
                "tanh_median_abs_log_chi1_err",
                "tanh_critical_rel_gap_median",
                "tanh_critical_rel_gap_max",
            ],
        },
        {
            "claim": "C5",
            "verdict": c5,
            "summary": (
                f"Sigmoid is not doomed to vanish: it has a critical line, at sigma_w^2 = "
                f"{sig_pred:.1f} for sigma_b = 0 (measured: {meas_text}), "
                f"far beyond usual initialisations (phi'(0) = 1/4 forces sigma_w^2 > 16)."
            ),
            "numbers": [
                "sigmoid_critical_sigma_w2_at_zero_bias",
                "sigmoid_measured_critical_sigma_w2_at_zero_bias",
                "sigmoid_median_abs_log_chi1_err",
            ],
        },
    ]
