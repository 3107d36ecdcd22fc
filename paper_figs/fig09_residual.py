"""Figure 9: residual stacks pass the gradient through, but unscaled ones blow up forward (C12)."""

from __future__ import annotations

import numpy as np

NAME = "residual"
TITLE = (
    "Residual blocks: the identity path carries the gradient to every layer; the forward "
    "variance grows with depth unless the branch is scaled (1/sqrt(L), SkipInit)"
)
CLAIMS = ("C12",)
METHODS = """ReLU stacks at sigma_w = 1 (below He's sqrt 2, so a plain stack vanishes), Gaussian
inputs and targets, MSE loss. Gradients: exact ||dL/da_l|| over the whole batch (one jax.grad
pass, gradjax.residual.residual_profile), relative to the top block's ||dL/da_L||, which is the
identity-path term of the exact decomposition dL/da_l = dL/da_L + sum_{k>l} g dL/da_k dF_k/da
(gradjax.residual.identity_path). Residual blocks x + g F(x) with g = 1 (plain), g = 1/sqrt(L)
(scaled)
and g = 0 (SkipInit at initialisation) share the weight draws (gradjax.residual.gain_profile:
SkipInit's
gain set to g). Forward: per-unit second moment E[a_l^2] without a norm and with BatchNorm or
LayerNorm inside the branch, against the mean-field recursion q_l = q_{l-1} + 2 g m_{l-1} E[phi]
+ g^2 E[phi^2] of gradjax.residual.residual_theory (quadrature; the norm pins the branch input to
N(0, 1),
so growth is linear in depth instead of geometric). Medians and interquartile ranges over
seeds."""

KINDS = ("plain", "scaled", "skipinit")


def config(quick: bool) -> dict:
    return {
        "activation": "relu",
        "depth": 32 if quick else 50,
        "width": 128 if quick else 256,
        "batch": 8 if quick else 16,
        "seeds": 2 if quick else 6,
        "sigma_w": 1.0,
        "norms": [None, "batch", "layer"],
        "key": 0,
    }


def _gains(depth: int) -> dict:
    return {"plain": 1.0, "scaled": 1.0 / np.sqrt(depth), "skipinit": 0.0}


def compute(cfg: dict, progress) -> dict:
    import jax
    import jax.numpy as jnp

    import gradjax as gj

    depth = cfg["depth"]
    base = gj.NetConfig(
        depth=depth, width=cfg["width"], activation=cfg["activation"], sigma_w=cfg["sigma_w"]
    )
    key = jax.random.key(cfg["key"])
    gains = _gains(depth)
    numbers, arrays = {}, {}

    progress("non-residual stack")
    m = gj.residual.residual_profile(gj.build(base), key, batch=cfg["batch"], seeds=cfg["seeds"])
    g = np.asarray(m.grad)
    arrays["none.none.grad"] = g / g[:, -1:]
    arrays["none.none.m2"] = np.asarray(m.second_moment)
    numbers["nonresidual_min_grad_ratio"] = float(np.min(np.median(g / g[:, -1:], axis=0)))

    for norm in cfg["norms"]:
        label = norm or "none"
        progress(f"residual stacks, norm={label}")
        net = gj.build(base.replace(norm=norm, residual="skipinit"))
        prof = gj.residual.gain_profile(
            net,
            key,
            gains=jnp.asarray([gains[k] for k in KINDS]),
            batch=cfg["batch"],
            seeds=cfg["seeds"],
        )
        for i, kind in enumerate(KINDS):
            g = np.asarray(prof.grad[i])
            m2 = np.asarray(prof.second_moment[i])
            ratio = g / g[:, -1:]
            arrays[f"{label}.{kind}.grad"] = ratio
            arrays[f"{label}.{kind}.m2"] = m2
            rcfg = base.replace(norm=norm, residual=kind)
            theory = np.asarray(gj.residual.residual_theory(rcfg).second_moment)
            arrays[f"{label}.{kind}.m2_theory"] = theory
            med = np.median(m2, axis=0)
            numbers[f"{label}_{kind}_min_grad_ratio"] = float(np.min(np.median(ratio, axis=0)))
            numbers[f"{label}_{kind}_input_grad_ratio"] = float(np.median(ratio[:, 0]))
            numbers[f"{label}_{kind}_forward_growth"] = float(med[-1] / med[0])
            numbers[f"{label}_{kind}_forward_growth_theory"] = float(theory[-1] / theory[0])
            with np.errstate(all="ignore"):
                rel = np.abs(med / theory - 1.0)
            numbers[f"{label}_{kind}_forward_max_rel_err"] = float(np.max(rel))
    numbers["forward_max_rel_err"] = max(
        numbers[f"{n or 'none'}_{k}_forward_max_rel_err"] for n in cfg["norms"] for k in KINDS
    )
    return {"numbers": numbers, "arrays": arrays}


def plot(cfg: dict, result: dict):
    from gradjax.plotting import PALETTE, band, new_figure, styled

    @styled
    def draw():
        arr, depth = result["arrays"], cfg["depth"]
        layers = np.arange(1, depth + 1)
        fig, axes = new_figure(2, 2, width=7.2, height=5.6)
        (a0, a1), (a2, a3) = axes
        col = {
            "none": PALETTE[7],
            "plain": PALETTE[3],
            "scaled": PALETTE[0],
            "skipinit": PALETTE[2],
        }
        text = {
            "plain": "residual, $g=1$",
            "scaled": r"residual, $g=1/\sqrt{L}$",
            "skipinit": "SkipInit, $g=0$",
        }

        band(a0, layers, arr["none.none.grad"], color=col["none"], label="no skip (plain MLP)")
        for kind in KINDS:
            band(a0, layers, arr[f"none.{kind}.grad"], color=col[kind], label=text[kind])
        a0.axhline(
            1.0,
            color="0.3",
            linewidth=0.8,
            linestyle=":",
            label="identity-path term $\\|\\partial L/\\partial a_L\\|$",
        )
        a0.set(
            yscale="log",
            xlabel="layer $l$",
            ylabel=r"$\|\partial L/\partial a_l\| / \|\partial L/\partial a_L\|$",
            title="(a) gradient reaching layer $l$ (no norm)",
        )
        a0.legend(fontsize=6.5)

        titles = {
            "none": "(b) forward, no norm",
            "batch": "(c) forward, BatchNorm in branch",
            "layer": "(d) forward, LayerNorm in branch",
        }
        for ax, norm in zip((a1, a2, a3), cfg["norms"], strict=True):
            label = norm or "none"
            if label == "none":
                band(ax, layers, arr["none.none.m2"], color=col["none"], label="no skip")
            for kind in KINDS:
                band(ax, layers, arr[f"{label}.{kind}.m2"], color=col[kind], label=text[kind])
                ax.plot(
                    layers,
                    arr[f"{label}.{kind}.m2_theory"],
                    color="0.15",
                    linestyle="--",
                    linewidth=0.8,
                )
            ax.plot([], [], color="0.15", linestyle="--", linewidth=0.8, label="mean-field theory")
            ax.set(
                yscale="log", xlabel="layer $l$", ylabel=r"$E[a_l^2]$ per unit", title=titles[label]
            )
            ax.legend(fontsize=6.5, loc="upper left")
        fig.suptitle(
            f"{cfg['activation']} stacks, depth {depth}, width {cfg['width']}, "
            f"$\\sigma_w$ = {cfg['sigma_w']:g}, batch {cfg['batch']}: median and IQR over "
            f"{cfg['seeds']} seeds",
            fontsize=9,
        )
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    residual_min = min(numbers[f"none_{k}_min_grad_ratio"] for k in KINDS)
    plain_min = numbers["nonresidual_min_grad_ratio"]
    passes = residual_min >= 0.9 and plain_min < 0.1
    blow = numbers["none_plain_forward_growth"]
    scaled = numbers["none_scaled_forward_growth"]
    grad_blow = numbers["none_plain_input_grad_ratio"]
    # The nuance: unscaled stacks blow up (forward, and the gradient with it) where the
    # scaled branch does not.
    forward_problem = blow > 100.0 * scaled and grad_blow > 100.0
    if not passes:
        verdict = "contradicted"
    else:
        verdict = "nuanced" if forward_problem else "confirmed"
    normed = max(numbers[f"{n}_{k}_forward_max_rel_err"] for n in ("batch", "layer") for k in KINDS)
    return [
        {
            "claim": "C12",
            "verdict": verdict,
            "summary": (
                f"Through the skips the gradient at every layer stays >= "
                f"{residual_min:.2f} x the top gradient (the identity-path term; SkipInit "
                f"exactly 1), while the plain {cfg['activation']} MLP falls to "
                f"{plain_min:.1e}. But unscaled residual stacks blow up: E[a^2] grows "
                f"x{blow:.3g} over {cfg['depth']} blocks without a norm (mean-field theory "
                f"x{numbers['none_plain_forward_growth_theory']:.3g}) and the input-layer "
                f"gradient x{grad_blow:.3g}; with BatchNorm in the branch the growth is linear "
                f"in depth (x{numbers['batch_plain_forward_growth']:.3g}). 1/sqrt(L) scaling "
                f"keeps the forward growth to x{scaled:.3g} (ReLU's mean still adds up) and "
                f"SkipInit to x{numbers['none_skipinit_forward_growth']:.3g}. Theory vs "
                f"measured E[a_l^2]: max rel. error {normed:.3f} with a norm, "
                f"{numbers['forward_max_rel_err']:.3f} overall (compounded fluctuations of "
                f"the unscaled stack)."
            ),
            "numbers": [
                *[f"none_{k}_min_grad_ratio" for k in KINDS],
                "nonresidual_min_grad_ratio",
                "none_plain_forward_growth",
                "none_plain_forward_growth_theory",
                "none_plain_input_grad_ratio",
                "batch_plain_forward_growth",
                "none_scaled_forward_growth",
                "none_skipinit_forward_growth",
                *[f"{n}_{k}_forward_max_rel_err" for n in ("batch", "layer") for k in KINDS],
                "forward_max_rel_err",
            ],
        }
    ]
