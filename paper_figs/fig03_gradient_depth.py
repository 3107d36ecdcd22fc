"""Per-layer gradient norms against depth, measured vs the mean-field line chi_1^(L-l).

The activation gradients ``||dL/da_l||`` are compared with theory, not the weight gradients:
``dL/dW_l = (dL/dz_l) a_{l-1}^T`` mixes the backward signal with the forward one, so e.g. a
tanh net at sigma_b = 0 in its linear regime has flat ``||dL/dW_l||`` (the shrinking
activations a_{l-1} cancel the growing backward signal) while ``||dL/da_l||`` does vanish.
The figure's last panel shows exactly that case.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

NAME = "gradient_depth"
TITLE = "Per-layer gradient norms vs depth: measured ||dL/da_l|| against chi_1^(L-l)"
CLAIMS = ("C4", "C5")
METHODS = (
    "For tanh (sigma_b^2 = 0.05), sigmoid and ReLU (sigma_b = 0), networks at sigma_w^2 below, "
    "at and above the mean-field critical value (gradjax.theory.critical_sigma_w2) are swept over "
    "seeds with gradjax.sweep and the gradient probe (MSE loss, N(0,1) inputs and targets). "
    "||dL/da_l|| normalised by the last layer's is compared with the theory line "
    "sqrt(chi_1^(L-l)) (gradjax.mean_field, gradjax.predicted_gradient_growth); the measured "
    "chi_1 is exp of the least-squares slope of log ||dL/da_l||^2 against l, per seed. "
    "Activation gradients are used because ||dL/dW_l|| also carries the forward signal."
)

ACTIVATIONS = ("tanh", "sigmoid", "relu")
SIGMA_B2 = {"tanh": 0.05, "sigmoid": 0.0, "relu": 0.0}


def config(quick: bool) -> dict:
    """Sizes: quick uses a narrower, shallower net and fewer seeds through the same code."""
    if quick:
        return {"depth": 16, "width": 128, "seeds": 3, "batch": 8, "skip": 2}
    return {"depth": 32, "width": 256, "seeds": 8, "batch": 16, "skip": 3}


def _sigma_w2_values(activation: str, critical: float) -> list[float]:
    # Below, at and above the edge of chaos. Sigmoid's "below" is sigma_w^2 = 16, the naive
    # guess from phi'(0) = 1/4 (16 / 4^2 = 1), which still vanishes because q* > 0; at the
    # textbook sigma_w^2 = 1 (chi_1 ~ 0.06) the gradient underflows float32 within 32 layers.
    if activation == "sigmoid":
        return [16.0, critical, 2.0 * critical]
    return [0.5 * critical, critical, 2.0 * critical]


def _fit_chi1(norms: np.ndarray, skip: int) -> np.ndarray:
    """Per-layer factor of ||dL/da_l||^2 towards the input, from layer ``skip`` on; per row."""
    from gradjax.utils.fitting import growth_per_layer

    tail = norms[..., skip:].astype(np.float64)
    # Gradients grow towards the input when chi_1 > 1; the factor of the squared norm is the
    # square of the norm's. A gradient that underflowed to 0 (or overflowed) leaves no slope
    # to fit: NaN, not a number from the remaining layers.
    usable = np.all((tail > 0) & np.isfinite(tail), axis=-1)
    return np.where(usable, growth_per_layer(tail, axis=-1) ** 2, np.nan)


def _num(value: float) -> float | str:
    value = float(value)
    if np.isfinite(value):
        return value
    return "nan" if np.isnan(value) else ("inf" if value > 0 else "-inf")


def compute(cfg: dict, progress: Callable[[str], None]) -> dict:
    """Sweeps each activation over its three sigma_w^2 values and fits the decay rates."""
    import gradjax as gj

    numbers: dict = {}
    arrays: dict = {}
    depth = cfg["depth"]
    linear_regime_sw2 = 0.8
    for act in ACTIVATIONS:
        progress(f"{act}: theory and sweep")
        sb2 = SIGMA_B2[act]
        crit = gj.theory.critical_sigma_w2(act, sb2)
        sw2 = np.array(_sigma_w2_values(act, crit))
        mf = gj.mean_field(act, sw2, sb2)
        net = gj.build(gj.NetConfig(depth=depth, width=cfg["width"], activation=act))
        # tanh also runs the sigma_b = 0, sigma_w^2 = 0.8 case of the last panel: one sweep
        # over both sigma_b values (one compile) instead of two.
        grid_w = np.append(sw2, linear_regime_sw2) if act == "tanh" else sw2
        grid_b = [0.0, math.sqrt(sb2)] if act == "tanh" else [math.sqrt(sb2)]
        res = gj.sweep(
            net,
            gj.probes.gradient_probe(net, batch=cfg["batch"]),
            seeds=cfg["seeds"],
            sigma_w=np.sqrt(grid_w),
            sigma_b=grid_b,
            chunk=(cfg["seeds"], len(grid_w) * len(grid_b)),
            progress=False,
            probe_name="gradient_probe",
        )
        acts_all = res["activations"]  # (seed, sigma_w, sigma_b, layer)
        acts = acts_all[:, : len(sw2), -1]
        rel = acts / acts[..., -1:]
        measured = _fit_chi1(acts, cfg["skip"])  # (seed, sigma_w)
        chi1 = np.asarray(mf.chi1, dtype=np.float64)
        arrays[f"{act}_rel"] = rel
        arrays[f"{act}_sigma_w2"] = sw2
        arrays[f"{act}_chi1"] = chi1
        numbers[f"{act}_critical_sigma_w2"] = float(crit)
        numbers[f"{act}_sigma_w2"] = [float(v) for v in sw2]
        numbers[f"{act}_chi1_theory"] = [float(v) for v in chi1]
        med = np.median(measured, axis=0)
        numbers[f"{act}_chi1_measured"] = [_num(v) for v in med]
        numbers[f"{act}_chi1_rel_err"] = [
            _num(abs(m / t - 1)) for m, t in zip(med, chi1, strict=True)
        ]
        first_over_last = np.median(rel[..., 0], axis=0)
        numbers[f"{act}_first_over_last"] = [_num(v) for v in first_over_last]
        if act == "tanh":
            # The case where weight gradients mislead: tanh, sigma_b = 0, sigma_w^2 = 0.8.
            w0 = res["weights"][:, -1, 0]
            a0 = acts_all[:, -1, 0]
            arrays["linear_regime_weights"] = w0 / w0[:, -1:]
            arrays["linear_regime_acts"] = a0 / a0[:, -1:]
            numbers["linear_regime_weight_first_over_last"] = float(np.median(w0[:, 0] / w0[:, -1]))
            numbers["linear_regime_act_first_over_last"] = float(np.median(a0[:, 0] / a0[:, -1]))
            numbers["linear_regime_chi1_theory"] = float(
                gj.mean_field("tanh", linear_regime_sw2, 0.0).chi1
            )
    numbers["sigmoid_critical_sigma_w"] = math.sqrt(numbers["sigmoid_critical_sigma_w2"])
    numbers["sigmoid_chi1_at_one"] = float(gj.mean_field("sigmoid", 1.0, 0.0).chi1)
    return {"numbers": numbers, "arrays": arrays}


def plot(cfg: dict, result: dict):
    """Three panels of ||dL/da_l|| / ||dL/da_L|| vs l with theory, plus the weight-gradient trap."""
    from gradjax.utils import plotting

    @plotting.styled
    def draw():
        arrays, numbers = result["arrays"], result["numbers"]
        fig, axes = plotting.new_figure(1, 4, width=7.0, height=2.6)
        depth = cfg["depth"]
        layers = np.arange(1, depth + 1)
        colors = plotting.colors(3)
        for ax, act in zip(axes[:3], ACTIVATIONS, strict=True):
            rel = arrays[f"{act}_rel"]
            for j, (sw2, chi) in enumerate(
                zip(arrays[f"{act}_sigma_w2"], arrays[f"{act}_chi1"], strict=True)
            ):
                label = f"$\\sigma_w^2$={sw2:.3g} ($\\chi_1$={chi:.2g})"
                plotting.band(ax, layers, rel[:, j], color=colors[j], label=label)
                theory = np.sqrt(chi ** (depth - layers.astype(np.float64)))
                ax.plot(layers, theory, ls="--", color=colors[j], lw=1.0, alpha=0.9)
            ax.set_yscale("log")
            sb2 = SIGMA_B2[act]
            ax.set_title(f"{act}, $\\sigma_b^2$={sb2:g}")
            ax.set_xlabel("layer $l$")
            ax.legend(loc="best", fontsize=6)
        axes[0].set_ylabel(r"$\|\partial L/\partial a_l\| \,/\, \|\partial L/\partial a_L\|$")
        ax = axes[3]
        plotting.band(
            ax,
            layers,
            arrays["linear_regime_acts"],
            color=colors[0],
            label=r"$\|\partial L/\partial a_l\|$",
        )
        plotting.band(
            ax,
            layers,
            arrays["linear_regime_weights"],
            color=colors[1],
            label=r"$\|\partial L/\partial W_l\|$",
        )
        chi = numbers["linear_regime_chi1_theory"]
        ax.plot(
            layers,
            np.sqrt(chi ** (depth - layers.astype(np.float64))),
            ls="--",
            color=colors[0],
            lw=1.0,
            label=r"theory $\chi_1^{(L-l)/2}$",
        )
        ax.set_yscale("log")
        ax.set_title(r"tanh, $\sigma_w^2$=0.8, $\sigma_b$=0")
        ax.set_xlabel("layer $l$")
        ax.set_ylabel("norm / last layer's")
        ax.legend(loc="best", fontsize=6)
        fig.suptitle(
            "Dashed: mean-field $\\chi_1^{(L-l)/2}$; bands: median and IQR over seeds", fontsize=8
        )
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    """C4 from the fitted vs theoretical chi_1; C5 from the saturating activations' critical
    points."""
    errs = [e for act in ACTIVATIONS for e in numbers[f"{act}_chi1_rel_err"]]
    fitted = [e for e in errs if isinstance(e, float)]
    worst = max(fitted) if fitted else float("inf")
    # Direction: below critical vanishes (first/last < 1), above explodes (> 1).
    ratio = lambda act, i: float(numbers[f"{act}_first_over_last"][i])
    direction_ok = all(ratio(act, 0) < 1 < ratio(act, 2) for act in ACTIVATIONS)
    c4 = (
        "confirmed"
        if direction_ok and worst <= 0.1
        else ("nuanced" if direction_ok else "contradicted")
    )
    sig_crit, tanh_crit, sig_naive = ratio("sigmoid", 1), ratio("tanh", 1), ratio("sigmoid", 0)
    doomed = sig_crit < 1e-2 and tanh_crit < 1e-2
    c5 = "confirmed" if doomed else "nuanced"
    return [
        {
            "claim": "C4",
            "verdict": c4,
            "summary": (
                f"||dL/da_l|| vanishes below and explodes above the critical sigma_w^2 in every "
                f"case; the fitted per-layer factor matches mean-field chi_1 to within "
                f"{100 * worst:.1f}% (worst of 9 settings)."
            ),
            "numbers": [f"{a}_chi1_rel_err" for a in ACTIVATIONS]
            + [f"{a}_first_over_last" for a in ACTIVATIONS],
        },
        {
            "claim": "C5",
            "verdict": c5,
            "summary": (
                f"Saturating activations are not doomed: at their critical points the first "
                f"layer's gradient is {tanh_crit:.2g}x (tanh) and {sig_crit:.2g}x (sigmoid) the "
                f"last's over {cfg['depth']} layers. Sigmoid's critical point is sigma_w^2 = "
                f"{numbers['sigmoid_critical_sigma_w2']:.1f} (sigma_w = "
                f"{numbers['sigmoid_critical_sigma_w']:.2f}); at the naive sigma_w^2 = 16 "
                f"(16 x phi'(0)^2 = 1) it still vanishes ({sig_naive:.1e}x), and at sigma_w^2 = 1 "
                f"chi_1 = {numbers['sigmoid_chi1_at_one']:.3f}, the article's vanishing case."
            ),
            "numbers": [
                "tanh_first_over_last",
                "sigmoid_first_over_last",
                "sigmoid_critical_sigma_w2",
                "sigmoid_critical_sigma_w",
                "sigmoid_chi1_at_one",
            ],
        },
    ]
