"""Figure 8: normalisation is scale invariant, yet deep BatchNorm nets explode at init (C11)."""

from __future__ import annotations

import numpy as np

NAME = "normalization"
TITLE = (
    "BatchNorm/LayerNorm: exact invariance to the weight scale, but BatchNorm's gradients "
    "explode at initialisation at the mean-field rate"
)
CLAIMS = ("C11",)
METHODS = """Scale invariance: one block's (W_l, b_l) of a 6-block tanh net is multiplied by c
(gradjax.normalization.scale_invariance) and the whole-batch block Jacobian dA_l/dA_{l-1}
(BatchNorm couples
the examples) and c * dL/dW_l are compared with the unscaled net, with BatchNorm, LayerNorm and no
norm. Gradient growth: exact per-layer ||dL/da_l|| of deep BatchNorm / LayerNorm nets at
initialisation (gradjax.normalization.norm_gradient_growth: jax.grad of the whole-batch MSE loss,
Gaussian
inputs and targets, seeds averaged in log space), per-layer factor of ||dL/da_l||^2 fitted over
the middle three fifths of the layers, against the mean-field rate derived in
gradjax.normalization (Yang et al. 2019): lambda_BN(B) = E[tr(P D G D P)] / ((B-3) E[v]) over u
uniform on the sqrt(B)-sphere of the mean-zero subspace (Monte Carlo), (B-2)/(B-3) for linear,
E[phi'^2]/Var[phi] for B -> infinity (pi/(pi-1) for ReLU), and lambda_LN = E[phi'^2]/E[phi^2]
(quadrature)."""


def config(quick: bool) -> dict:
    return {
        # Quick mode measures BatchNorm-ReLU and LayerNorm-tanh only (each measured network is
        # one compilation) and tabulates the rate for those; full mode does all three
        # activations for both norms and the rate for every activation of the table.
        "activations": ["relu"] if quick else ["linear", "relu", "tanh"],
        "ln_activations": ["tanh"] if quick else ["relu", "tanh"],
        "table_activations": ["relu", "tanh"] if quick else None,
        "depth": 50 if quick else 60,
        "width": 128 if quick else 256,
        "seeds": 2 if quick else 4,
        "batch_sizes": [16] if quick else [8, 32, 128],
        "ln_batch": 4,
        "theory_batch_sizes": [4, 64] if quick else [4, 16, 64, 256],
        "theory_samples": 4096 if quick else 16384,
        "invariance": {
            "depth": 6,
            "eps": 1e-8,
            "width": 32,
            "batch": 16,
            "layer": 2,
            "scales": [0.1, 0.3, 1.0, 3.0, 10.0]
            if quick
            else [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0],
        },
        "key": 0,
    }


def _invariance(cfg: dict, progress) -> tuple[dict, dict]:
    import jax
    import jax.numpy as jnp

    import gradjax as gj

    inv = cfg["invariance"]
    key = jax.random.key(cfg["key"])
    kp, kx, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (inv["batch"], inv["width"]))
    y = jax.random.normal(ky, (inv["batch"], 1))
    cs = jnp.asarray(inv["scales"], jnp.float32)
    numbers, arrays = {}, {"invariance.c": np.asarray(cs)}
    for norm in ("batch", "layer", None):
        label = norm or "none"
        progress(f"scale invariance, norm={label}")
        net = gj.build(
            gj.NetConfig(
                depth=inv["depth"],
                width=inv["width"],
                activation="tanh",
                sigma_b=0.2,
                norm=norm,
                norm_eps=inv["eps"],
            )
        )
        params = net.init(kp)
        r = jax.vmap(
            lambda c, net=net, params=params: gj.normalization.scale_invariance(
                net, params, x, y, layer=inv["layer"], c=c
            )
        )(cs)
        arrays[f"invariance.{label}.jacobian"] = np.asarray(r.jacobian_rel_change)
        arrays[f"invariance.{label}.grad"] = np.asarray(r.grad_rel_err)
        off = np.abs(np.asarray(cs) - 1.0) > 1e-6
        numbers[f"invariance_{label}_max_jacobian_rel_change"] = float(
            np.max(r.jacobian_rel_change[off])
        )
        numbers[f"invariance_{label}_max_grad_rel_err"] = float(np.max(r.grad_rel_err[off]))
        numbers[f"invariance_{label}_min_grad_rel_err"] = float(np.min(r.grad_rel_err[off]))
    return numbers, arrays


def compute(cfg: dict, progress) -> dict:
    import jax

    import gradjax as gj

    numbers, arrays = _invariance(cfg, progress)
    acts, depth, width = cfg["activations"], cfg["depth"], cfg["width"]
    key = jax.random.key(cfg["key"] + 1)

    # Theory: the derived rate for every activation of the table, at the measured batch sizes
    # and along a batch-size grid (one compiled Monte Carlo per batch size).
    tb = tuple(sorted(set(cfg["theory_batch_sizes"]) | set(cfg["batch_sizes"])))
    names = cfg["table_activations"]
    table = gj.normalization.rate_table(
        batch_sizes=tb,
        activations=None if names is None else tuple(names),
        samples=cfg["theory_samples"],
    )
    arrays["theory.batch_sizes"] = np.asarray(tb)
    for i, a in enumerate(table.activations):
        arrays[f"theory.bn.{a}"] = np.asarray(table.batch_norm[i])
        numbers[f"bn_rate_theory_{a}_inf"] = float(table.batch_norm_inf[i])
        numbers[f"ln_rate_theory_{a}"] = float(table.layer_norm[i])
        for j, b in enumerate(table.batch_sizes):
            if b in cfg["batch_sizes"]:
                numbers[f"bn_rate_theory_{a}_B{b}"] = float(table.batch_norm[i, j])

    # Measurements: deep BatchNorm nets at every batch size, LayerNorm nets at one.
    errs = []
    for a in acts:
        for b in cfg["batch_sizes"]:
            progress(f"BatchNorm {a}, batch {b}")
            net = gj.build(gj.NetConfig(depth=depth, width=width, activation=a, norm="batch"))
            m = gj.normalization.norm_gradient_growth(net, key, batch=b, seeds=cfg["seeds"])
            arrays[f"bn.{a}.B{b}"] = np.asarray(m.activations)
            rate = float(m.fit.rate)
            theory = numbers[f"bn_rate_theory_{a}_B{b}"]
            numbers[f"bn_rate_measured_{a}_B{b}"] = rate
            numbers[f"bn_rate_rel_err_{a}_B{b}"] = rate / theory - 1.0
            numbers[f"bn_growth_input_over_top_{a}_B{b}"] = float(
                np.median(m.activations[:, 0] / m.activations[:, -1])
            )
            errs.append(abs(rate / theory - 1.0))
    for a in cfg["ln_activations"]:
        progress(f"LayerNorm {a}")
        net = gj.build(gj.NetConfig(depth=depth, width=width, activation=a, norm="layer"))
        m = gj.normalization.norm_gradient_growth(
            net, key, batch=cfg["ln_batch"], seeds=cfg["seeds"]
        )
        arrays[f"ln.{a}"] = np.asarray(m.activations)
        numbers[f"ln_rate_measured_{a}"] = float(m.fit.rate)
        numbers[f"ln_rate_rel_err_{a}"] = float(m.fit.rate) / numbers[f"ln_rate_theory_{a}"] - 1
        errs.append(abs(numbers[f"ln_rate_rel_err_{a}"]))
    numbers["max_rate_rel_err"] = float(max(errs))
    numbers["fit_first_layer"] = depth // 5
    numbers["fit_last_layer"] = depth - depth // 5
    return {"numbers": numbers, "arrays": arrays}


def _profile_panel(ax, result, prefix, acts, rates, depth, colors, band, title):
    layers = np.arange(1, depth + 1)
    first, last = depth // 5, depth - depth // 5
    for k, a in enumerate(acts):
        g = result["arrays"][f"{prefix}.{a}" if prefix == "ln" else f"bn.{a}.{prefix}"]
        ratio = g / g[:, -1:]
        band(ax, layers, ratio, color=colors[k], label=a)
        # Theory: ||g_l|| grows by sqrt(lambda) per layer; anchored at the fit window's end.
        anchor = np.exp(np.mean(np.log(ratio[:, last - 1])))
        lam = rates[a]
        span = np.arange(first, last)
        ax.plot(
            span + 1,
            anchor * lam ** (0.5 * (last - 1 - span)),
            color=colors[k],
            linestyle="--",
            linewidth=1.0,
        )
    ax.set(
        yscale="log",
        xlabel="layer $l$",
        title=title,
        ylabel=r"$\|\partial L/\partial a_l\| / \|\partial L/\partial a_L\|$",
    )


def plot(cfg: dict, result: dict):
    from gradjax.utils.plotting import band, colors, new_figure, styled

    @styled
    def draw():
        n, arr = result["numbers"], result["arrays"]
        acts, depth = cfg["activations"], cfg["depth"]
        # One colour per activation across panels (after the three used for the norms).
        act_color = dict(zip(["linear", "relu", "tanh"], colors(6)[3:], strict=True))
        cols = [act_color[a] for a in acts]
        ln_cols = [act_color[a] for a in cfg["ln_activations"]]
        fig, axes = new_figure(2, 2, width=7.2, height=5.6)
        (a0, a1), (a2, a3) = axes

        c = arr["invariance.c"]
        floor = 1e-9  # exact zeros (c = 1) drawn at the floor of the log axis
        styles = {
            "batch": ("BatchNorm", colors(3)[0]),
            "layer": ("LayerNorm", colors(3)[1]),
            "none": ("no norm", colors(3)[2]),
        }
        for label, (text, col) in styles.items():
            a0.plot(
                c,
                np.maximum(arr[f"invariance.{label}.grad"], floor),
                "o-",
                color=col,
                label=text,
                markersize=3,
            )
            a0.plot(
                c,
                np.maximum(arr[f"invariance.{label}.jacobian"], floor),
                "s--",
                color=col,
                markersize=3,
                linewidth=0.9,
            )
        a0.plot(
            [],
            [],
            "o-",
            color="0.4",
            markersize=3,
            label=r"$\|c\,\nabla_W L(c) - \nabla_W L\| / \|\nabla_W L\|$",
        )
        a0.plot(
            [],
            [],
            "s--",
            color="0.4",
            markersize=3,
            linewidth=0.9,
            label=r"$\|J_l(c) - J_l\| / \|J_l\|$ (whole batch)",
        )
        a0.set(
            xscale="log",
            yscale="log",
            xlabel=r"weight scale factor $c$ on $(W_l, b_l)$",
            ylabel="relative change (exact 0 drawn at 1e-9)",
            title=f"(a) scale invariance, float32, eps={cfg['invariance']['eps']:g}",
        )
        a0.set_ylim(floor / 3, 1e3)
        a0.legend(fontsize=6.5, loc="upper center", ncol=2)

        b_big = cfg["batch_sizes"][-1]
        bn_rates = {a: n[f"bn_rate_theory_{a}_B{b_big}"] for a in acts}
        _profile_panel(
            a1,
            result,
            f"B{b_big}",
            acts,
            bn_rates,
            depth,
            cols,
            band,
            f"(b) BatchNorm, batch {b_big}: per-layer gradient",
        )
        a1.legend(
            title="solid: measured (median, IQR)\ndashed: mean-field rate",
            fontsize=7,
            title_fontsize=6.5,
        )

        tb = arr["theory.batch_sizes"]
        markers = ["o", "s", "^", "D"]
        for k, a in enumerate(acts):
            a2.plot(tb, arr[f"theory.bn.{a}"], color=cols[k], label=f"{a}: derived")
            a2.axhline(n[f"bn_rate_theory_{a}_inf"], color=cols[k], linestyle=":", linewidth=0.8)
            bs = cfg["batch_sizes"]
            a2.plot(
                bs,
                [n[f"bn_rate_measured_{a}_B{b}"] for b in bs],
                markers[k % 4],
                color=cols[k],
                label=f"{a}: measured",
                markersize=5,
                markerfacecolor="none",
            )
        a2.set(
            xscale="log",
            xlabel="batch size $B$",
            ylabel=r"growth of $\|\partial L/\partial a_l\|^2$ per layer",
            title=r"(c) BatchNorm rate vs batch size ($B\to\infty$ dotted)",
        )
        a2.legend(fontsize=6.5, ncol=2)
        # Label the batch sizes themselves; log-axis minor labels would overlap.
        from matplotlib.ticker import NullFormatter

        a2.set_xticks(tb, [str(int(v)) for v in tb])
        a2.xaxis.set_minor_formatter(NullFormatter())

        ln_rates = {a: n[f"ln_rate_theory_{a}"] for a in cfg["ln_activations"]}
        _profile_panel(
            a3,
            result,
            "ln",
            cfg["ln_activations"],
            ln_rates,
            depth,
            ln_cols,
            band,
            f"(d) LayerNorm (batch {cfg['ln_batch']}): rate "
            r"$E[\phi'^2]/E[\phi^2]$",
        )
        a3.legend(fontsize=7)
        fig.suptitle(
            f"Normalised nets at initialisation: depth {depth}, width {cfg['width']}, "
            f"{cfg['seeds']} seeds",
            fontsize=9,
        )
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    inv = max(
        numbers["invariance_batch_max_grad_rel_err"],
        numbers["invariance_layer_max_grad_rel_err"],
        numbers["invariance_batch_max_jacobian_rel_change"],
        numbers["invariance_layer_max_jacobian_rel_change"],
    )
    violation = numbers["invariance_none_min_grad_rel_err"]
    invariant = inv < 1e-3 and violation > 1e-2
    b = cfg["batch_sizes"][-1]
    relu_rate = numbers[f"bn_rate_measured_relu_B{b}"]
    growth = numbers[f"bn_growth_input_over_top_relu_B{b}"]
    explodes = relu_rate > 1.1 and growth > 10.0
    err = numbers["max_rate_rel_err"]
    if not invariant:
        verdict = "contradicted"
    else:
        verdict = "nuanced" if explodes else "confirmed"
    others = [a for a in cfg["activations"] if a != "relu"]
    bn_others = ", ".join(f"{a} x{numbers[f'bn_rate_measured_{a}_B{b}']:.3f}" for a in others)
    ln_all = ", ".join(
        f"{a} x{numbers[f'ln_rate_measured_{a}']:.3f} (derived "
        f"{numbers[f'ln_rate_theory_{a}']:.3f})"
        for a in cfg["ln_activations"]
    )
    return [
        {
            "claim": "C11",
            "verdict": verdict,
            "summary": (
                f"Scale invariance holds to {inv:.1e} (BatchNorm and LayerNorm; without a norm "
                f"the change is >= {violation:.2f}). But deep BatchNorm nets explode at init: "
                f"ReLU, batch {b}: ||dL/da_l||^2 grows x{relu_rate:.3f} per layer (derived "
                f"{numbers[f'bn_rate_theory_relu_B{b}']:.3f}; pi/(pi-1) = "
                f"{numbers['bn_rate_theory_relu_inf']:.3f} as B -> inf), x{growth:.3g} in "
                f"norm from top to input{'; ' + bn_others if bn_others else ''}. LayerNorm: "
                f"{ln_all}. Largest "
                f"|measured/derived - 1| = {err:.3f}."
            ),
            "numbers": [
                "invariance_batch_max_grad_rel_err",
                "invariance_layer_max_grad_rel_err",
                "invariance_batch_max_jacobian_rel_change",
                "invariance_layer_max_jacobian_rel_change",
                "invariance_none_min_grad_rel_err",
                f"bn_rate_measured_relu_B{b}",
                f"bn_rate_theory_relu_B{b}",
                "bn_rate_theory_relu_inf",
                f"bn_growth_input_over_top_relu_B{b}",
                *[f"bn_rate_measured_{a}_B{b}" for a in others],
                *[f"ln_rate_measured_{a}" for a in cfg["ln_activations"]],
                *[f"ln_rate_theory_{a}" for a in cfg["ln_activations"]],
                "max_rate_rel_err",
            ],
        }
    ]
