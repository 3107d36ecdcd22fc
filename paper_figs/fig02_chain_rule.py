"""Figure 2: the chain rule made visible: per-layer factors, their running product, and the
exact gradient (C1, C2)."""

from __future__ import annotations

import numpy as np

NAME = "chain_rule"
TITLE = "The chain rule, layer by layer: factors J_l, their running product, and jax.grad"
CLAIMS = ("C1", "C2")
METHODS = """Deep tanh networks (Gaussian init, sigma_b^2 = 0.05) at 0.6x, 1x and 1.5x the critical
sigma_w (chi_1 = 1, from gradjax.theory), several seeds,
through gradjax.sweep. For one input, the exact layer Jacobians J_l (gradjax.layer_jacobians)
give the per-layer factor sqrt(mean sigma^2(J_l)) (its rms gain); dL/da_l is computed twice:
by multiplying dL/da_L by the exact J_l one at a time
(gradjax.jacobians.chain_rule_activation_gradients,
the article's formula carried out literally) and by reverse-mode autodiff (jax.grad through
gradjax.layer_gradients). The dashed lines are ||dL/da_L|| times the running product of the rms
factors: the mean-field prediction of the gradient norm. Separately, in float64,
gradjax.chain_rule_check compares the product J_L...J_1 with the directly computed end-to-end
Jacobian (C1), each J_l with diag(phi'(z_l)) W_l (C2), and dL/dW_l assembled by hand with
jax.grad, for plain tanh and relu networks and residual ones with x + phi(W x + b) blocks."""


def config(quick: bool) -> dict:
    return {
        "depth": 12 if quick else 32,
        "width": 48 if quick else 256,
        "seeds": 3 if quick else 8,
        # sigma_w as multiples of the critical value (chi_1 = 1) at this sigma_b.
        "regimes": {"ordered": 0.6, "critical": 1.0, "chaotic": 1.5},
        "sigma_b2": 0.05,
        "check_depth": 10,
        "check_width": 24,
    }


def _probe(net):
    import jax
    import jax.numpy as jnp

    import gradjax as gj

    def probe(params, key):
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (net.cfg.input_dim,))
        y = jax.random.normal(ky, (net.cfg.out_dim,))
        by_hand = gj.jacobians.chain_rule_activation_gradients(net, params, x, y)
        auto = gj.layer_gradients(net, params, x[None], y[None]).activations[:, 0]
        jac = gj.layer_jacobians(net, params, x)
        mean_sq = gj.spectrum_summary(jac.all_layers()).mean_sq
        return {
            "exact": jnp.linalg.norm(auto, axis=-1),
            "by_hand": jnp.linalg.norm(by_hand, axis=-1),
            "max_abs_diff": jnp.max(jnp.abs(by_hand - auto), axis=-1),
            "rms_factor": jnp.sqrt(mean_sq),
        }

    return probe


def _float64_checks(cfg: dict) -> dict:
    import jax
    import jax.numpy as jnp

    import gradjax as gj

    worst = {"product_error": 0.0, "factor_error": 0.0, "gradient_error": 0.0}
    with jax.enable_x64(True):
        for act in ("tanh", "relu"):
            for residual in (None, "plain"):
                net = gj.build(
                    gj.NetConfig(
                        depth=cfg["check_depth"],
                        width=cfg["check_width"],
                        activation=act,
                        residual=residual,
                        # The residual block whose factor is I + g diag(phi'(z)) W.
                        residual_block="act_branch" if residual else "pre",
                        sigma_w=1.2,
                        sigma_b=0.2,
                        dtype="float64",
                    )
                )
                params = net.init(jax.random.key(0))
                x = jax.random.normal(jax.random.key(1), (cfg["check_width"],), jnp.float64)
                check = gj.chain_rule_check(net, params, x, jnp.ones((1,), jnp.float64))
                for k in worst:
                    worst[k] = max(worst[k], float(getattr(check, k)))
    return worst


def compute(cfg: dict, progress) -> dict:
    import gradjax as gj

    progress("float64 chain-rule checks")
    numbers = {f"float64_{k}": v for k, v in _float64_checks(cfg).items()}
    progress("sweep")
    critical = gj.theory.critical_sigma_w2("tanh", cfg["sigma_b2"]) ** 0.5
    numbers["critical_sigma_w"] = critical
    regimes = list(cfg["regimes"])
    sigma_w = [critical * cfg["regimes"][r] for r in regimes]
    net = gj.build(
        gj.NetConfig(
            depth=cfg["depth"],
            width=cfg["width"],
            activation="tanh",
            sigma_b=cfg["sigma_b2"] ** 0.5,
        )
    )
    res = gj.sweep(
        net,
        _probe(net),
        seeds=cfg["seeds"],
        sigma_w=sigma_w,
        progress=False,
        probe_name="chain_rule",
    )
    exact, by_hand = res["exact"], res["by_hand"]  # (seed, sigma_w, layer)
    rel = res["max_abs_diff"] / np.maximum(exact, 1e-30) * np.sqrt(cfg["width"])
    numbers["float32_by_hand_vs_grad_max_rel_diff"] = float(np.max(rel))
    # Mean-field prediction from the running product of the rms factors, down to layer 1.
    factors = res["rms_factor"]
    pred = exact[..., -1:] * np.cumprod(factors[..., :0:-1], axis=-1)[..., ::-1]
    pred = np.concatenate([pred, exact[..., -1:]], axis=-1)
    log_err = np.abs(np.log10(pred[..., 0] / exact[..., 0]))
    numbers["rms_product_prediction_median_abs_log10_error_layer1"] = float(np.median(log_err))
    for j, regime in enumerate(regimes):
        ratio = exact[:, j, 0] / exact[:, j, -1]
        numbers[f"grad_ratio_first_over_last_{regime}"] = float(np.median(ratio))
        numbers[f"median_rms_factor_{regime}"] = float(np.median(factors[:, j, 1:]))
    arrays = {
        "exact": exact,
        "by_hand": by_hand,
        "rms_factor": factors,
        "predicted": pred,
        "sigma_w": np.asarray(sigma_w),
    }
    return {"numbers": numbers, "arrays": arrays}


def plot(cfg: dict, result: dict):
    from gradjax.utils.plotting import band, new_figure, sequential_colors, styled

    @styled
    def draw():
        a = result["arrays"]
        layers = np.arange(1, a["exact"].shape[-1] + 1)
        fig, axes = new_figure(1, 2, width=7.2, height=2.9)
        cols = sequential_colors(len(a["sigma_w"]))
        for j, sw in enumerate(a["sigma_w"]):
            regime = list(cfg["regimes"])[j]
            band(
                axes[0],
                layers,
                a["rms_factor"][:, j],
                color=cols[j],
                label=f"{regime}, $\\sigma_w$={sw:.2f}",
            )
            band(axes[1], layers, a["exact"][:, j], color=cols[j], label=f"jax.grad, {regime}")
            axes[1].plot(
                layers,
                np.median(a["by_hand"][:, j], axis=0),
                "o",
                color=cols[j],
                markersize=2.5,
                label="J-product by hand" if j == 0 else None,
            )
            axes[1].plot(
                layers,
                np.median(a["predicted"][:, j], axis=0),
                "--",
                color=cols[j],
                linewidth=1.0,
                label="rms-factor product" if j == 0 else None,
            )
        axes[0].axhline(1.0, color="0.4", linewidth=0.8, linestyle=":")
        axes[0].set(
            xlabel="layer $l$",
            ylabel=r"$\sqrt{\mathrm{mean}\,\sigma^2(J_l)}$",
            title="per-layer chain-rule factor (rms gain)",
        )
        axes[1].set(
            yscale="log",
            xlabel="layer $l$",
            ylabel=r"$\|\partial L/\partial a_l\|$",
            title="gradient reaching layer $l$ (median, IQR)",
        )
        axes[0].legend(loc="best")
        axes[1].legend(loc="best", fontsize=6.5)
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    prod, fac = numbers["float64_product_error"], numbers["float64_factor_error"]
    grad, f32 = numbers["float64_gradient_error"], numbers["float32_by_hand_vs_grad_max_rel_diff"]
    c1 = prod < 1e-12 and grad < 1e-12 and f32 < 1e-3
    return [
        {
            "claim": "C1",
            "verdict": "confirmed" if c1 else "contradicted",
            "summary": (
                f"product of layer Jacobians vs end-to-end Jacobian: relative error {prod:.1e} "
                f"(float64); dL/dW_l by hand vs jax.grad: {grad:.1e}; dL/da_l by explicit J "
                f"products vs jax.grad in float32: {f32:.1e}. Gradient at layer 1 relative to "
                f"the last layer: {numbers['grad_ratio_first_over_last_ordered']:.1e} (ordered), "
                f"{numbers['grad_ratio_first_over_last_critical']:.2f} (critical), "
                f"{numbers['grad_ratio_first_over_last_chaotic']:.1e} (chaotic)."
            ),
            "numbers": [
                "float64_product_error",
                "float64_gradient_error",
                "float32_by_hand_vs_grad_max_rel_diff",
                "grad_ratio_first_over_last_ordered",
                "grad_ratio_first_over_last_critical",
                "grad_ratio_first_over_last_chaotic",
            ],
        },
        {
            "claim": "C2",
            "verdict": "confirmed" if fac < 1e-12 else "contradicted",
            "summary": (
                f"every J_l equals diag(phi'(z_l)) W_l (plus I for x + phi(Wx + b) blocks) to "
                f"{fac:.1e} relative error in float64, for tanh and relu."
            ),
            "numbers": ["float64_factor_error"],
        },
    ]
