"""Figure 7: activation x initialisation in deep nets: gradient flow and accuracy (C10, C13)."""

from __future__ import annotations

import math

import numpy as np

NAME = "activation_init"
TITLE = "Deep sigmoid/tanh/ReLU nets under naive, Glorot, He, orthogonal and critical init"
CLAIMS = ("C10", "C13")
METHODS = """Fully connected nets of depth >= 20 on scikit-learn's digits (fixed 1437/360
split), trained with plain minibatch SGD (constant learning rate, no clipping, so the
initialisation alone decides), all seeds and initialisations of one activation vmapped in one
compiled program (gradjax.train with the initial parameters given). Inits: naive N(0, 1)
weights (gradjax init "normal", sigma_w = 1, no fan-in scaling), Glorot, He, Haar orthogonal
(gain 1) and critical (Gaussian at the sigma_w^2 where the mean-field chi_1 = 1, from
gradjax.theory.critical_sigma_w2; sigma_b = 0). Recorded per step: the first layer's weight
gradient norm ||dL/dW_1|| (the layer furthest from the loss); at initialisation also the
ratio ||dL/dW_1|| / ||dL/dW_L|| (vanishing < 1 < exploding). A diverged run (non-finite value)
is masked from its first non-finite step and counted. Median and interquartile range over
seeds; initial draws and minibatch order shared across inits (common random numbers)."""

INITS = ("normal", "glorot", "he", "orthogonal", "critical")
ACTIVATIONS = ("sigmoid", "tanh", "relu")


def config(quick: bool) -> dict:
    if quick:
        return {"depth": 20, "width": 32, "seeds": 4, "steps": 60, "batch": 64, "lr": 0.05}
    return {"depth": 20, "width": 64, "seeds": 8, "steps": 200, "batch": 64, "lr": 0.05}


def _available_inits() -> list[str]:
    # "critical" needs gradjax.theory (mean-field chi_1 = 1); skip it only if absent.
    try:
        from gradjax.meanfield.theory import critical_sigma_w2  # noqa: F401
    except ImportError:
        return [i for i in INITS if i != "critical"]
    return list(INITS)


def compute(cfg: dict, progress) -> dict:
    import jax
    import jax.numpy as jnp

    import gradjax as gj
    from gradjax.training.loop import train
    from gradjax.training.statistics import seed_quantiles

    data = gj.data.digits()
    inits = _available_inits()
    tcfg = gj.TrainConfig(
        optimizer="sgd",
        learning_rate=cfg["lr"],
        steps=cfg["steps"],
        batch_size=cfg["batch"],
        end_lr_fraction=1.0,
    )
    keys = jax.random.split(jax.random.key(0), cfg["seeds"])
    arrays = {"steps": np.arange(1, cfg["steps"] + 1)}
    numbers: dict = {"inits": inits}
    for act in ACTIVATIONS:
        progress(f"{act}: {len(inits)} inits x {cfg['seeds']} seeds")
        base_cfg = gj.NetConfig(
            depth=cfg["depth"],
            width=cfg["width"],
            input_dim=data.input_dim,
            out_dim=data.num_classes,
            activation=act,
            init="gaussian",
        )
        if "critical" in inits:
            from gradjax.meanfield.theory import critical_sigma_w2

            # Solved eagerly first: it is cached, so the traced init below reuses the value.
            numbers[f"{act}_critical_sigma_w2"] = float(critical_sigma_w2(act, 0.0))
        # The same seeds' initial parameters under every scheme, stacked on the hyper axis;
        # the training program depends on the activation only, so it compiles once per act.
        params = jax.tree.map(
            lambda *leaves: jnp.stack(leaves),
            *[jax.vmap(gj.build(base_cfg.replace(init=kind)).init)(keys) for kind in inits],
        )
        res = train(gj.build(base_cfg), data, tcfg, seeds=cfg["seeds"], key=0, params=params)
        h = res.history
        g = np.asarray(h.grad_norms, np.float64)
        for i, kind in enumerate(inits):
            name = f"{act}_{kind}"
            arrays[f"{name}.grad_first"] = g[i, :, :, 0]
            arrays[f"{name}.loss"] = np.asarray(h.loss[i])
            acc = np.asarray(h.test.accuracy[i], np.float64)
            arrays[f"{name}.test_accuracy"] = acc
            diverged = np.asarray(h.first_nonfinite[i]) >= 0
            q = seed_quantiles(acc[None], axis=1)
            numbers[f"{name}_test_acc_median"] = float(q.median[0])
            numbers[f"{name}_test_acc_iqr"] = [float(q.q25[0]), float(q.q75[0])]
            numbers[f"{name}_divergence_rate"] = float(np.mean(diverged))
            with np.errstate(all="ignore"):
                ratio0 = g[i, :, 0, 0] / g[i, :, 0, -1]
            numbers[f"{name}_grad_ratio_first_over_last_at_init"] = _safe(np.median(ratio0))
            numbers[f"{name}_grad_first_at_init"] = _safe(np.median(g[i, :, 0, 0]))
    return {"numbers": numbers, "arrays": arrays}


def _safe(v) -> float | str:
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else "inf"


def _f(v) -> float:
    return float(v)


def plot(cfg: dict, result: dict):
    from gradjax.utils.plotting import band, colors, new_figure, styled

    @styled
    def draw():
        a, n = result["arrays"], result["numbers"]
        inits = n["inits"]
        cols = colors(len(inits))
        steps = a["steps"]
        fig, axes = new_figure(2, 3, width=7.0, height=5.0)
        labels = {
            "normal": "naive N(0,1)",
            "glorot": "Glorot",
            "he": "He",
            "orthogonal": "orthogonal",
            "critical": r"critical ($\chi_1$=1)",
        }
        for j, act in enumerate(ACTIVATIONS):
            ax = axes[0, j]
            for kind, col in zip(inits, cols, strict=True):
                band(
                    ax,
                    steps,
                    a[f"{act}_{kind}.grad_first"],
                    color=col,
                    label=labels[kind] if j == 0 else None,
                )
            ax.set(
                yscale="log",
                xlabel="step",
                title=f"{act}, depth {cfg['depth']}",
                ylabel=r"$\|\partial L/\partial W_1\|_F$" if j == 0 else None,
            )
            ax = axes[1, j]
            x = np.arange(len(inits))
            for k, (kind, col) in enumerate(zip(inits, cols, strict=True)):
                acc = a[f"{act}_{kind}.test_accuracy"]
                med = np.median(acc)
                lo, hi = np.percentile(acc, [25, 75])
                ax.bar(k, med, color=col, alpha=0.8)
                ax.errorbar(k, med, yerr=[[med - lo], [hi - med]], color="0.2", capsize=2)
                div = n[f"{act}_{kind}_divergence_rate"]
                if div > 0:
                    ax.text(k, max(med, 0) + 0.04, f"{div:.0%}\ndiv.", ha="center", fontsize=6)
            ax.axhline(0.1, color="0.5", linestyle=":", linewidth=0.8)
            ax.set(
                xticks=x,
                xticklabels=[labels[k].split(" (")[0] for k in inits],
                ylim=(0, 1.1),
                ylabel="test accuracy" if j == 0 else None,
            )
            ax.tick_params(axis="x", labelrotation=40, labelsize=7)
        fig.legend(
            *axes[0, 0].get_legend_handles_labels(),
            loc="outside lower center",
            ncol=len(inits),
            fontsize=7,
        )
        fig.suptitle(
            f"Digits, width {cfg['width']}, SGD lr {cfg['lr']:g}, {cfg['steps']} steps, "
            f"{cfg['seeds']} seeds (median, IQR; dotted: chance)",
            fontsize=9,
        )
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    n = numbers
    inits = n["inits"]
    sensible = [k for k in inits if k != "normal"]
    out = []
    # C10: ReLU's unit derivative on x > 0 fixes vanishing - only at the right scale.
    he = n["relu_he_test_acc_median"]
    others = {k: n[f"relu_{k}_test_acc_median"] for k in inits if k != "he"}
    ratios = {k: n[f"relu_{k}_grad_ratio_first_over_last_at_init"] for k in inits}
    bad = [k for k in others if others[k] < he - 0.1]
    if he < 0.5:
        c10 = "contradicted"
    elif bad:
        c10 = "nuanced"
    else:
        c10 = "confirmed"
    ratio_txt = ", ".join(
        f"{k} {v:.3g}" if not isinstance(v, str) else f"{k} {v}" for k, v in ratios.items()
    )
    out.append(
        {
            "claim": "C10",
            "verdict": c10,
            "summary": (
                f"Depth-{cfg['depth']} ReLU reaches {he:.1%} test accuracy with He init, but "
                + (", ".join(f"{k} {others[k]:.1%}" for k in bad) if bad else "all inits train")
                + f"; ||dL/dW_1||/||dL/dW_L|| at init: {ratio_txt}. The derivative is 1 on x>0, "
                "yet the weight scale still decides whether gradients vanish or explode."
            ),
            "numbers": [
                "relu_he_test_acc_median",
                *[f"relu_{k}_test_acc_median" for k in others],
                *[f"relu_{k}_grad_ratio_first_over_last_at_init" for k in inits],
            ],
        }
    )
    # C13: a sensible initialisation fixes both.
    fixed, parts = 0, []
    for act in ACTIVATIONS:
        naive = n[f"{act}_normal_test_acc_median"]
        best_kind = max(sensible, key=lambda k: n[f"{act}_{k}_test_acc_median"])
        best = n[f"{act}_{best_kind}_test_acc_median"]
        fixed += int(best >= naive + 0.2 and best >= 0.7)
        parts.append(f"{act}: naive {naive:.1%} -> {best_kind} {best:.1%}")
    c13 = "confirmed" if fixed == len(ACTIVATIONS) else ("nuanced" if fixed else "contradicted")
    out.append(
        {
            "claim": "C13",
            "verdict": c13,
            "summary": "Median test accuracy, naive N(0,1) vs the best sensible init: "
            + "; ".join(parts)
            + ".",
            "numbers": [f"{act}_{k}_test_acc_median" for act in ACTIVATIONS for k in inits],
        }
    )
    return out
