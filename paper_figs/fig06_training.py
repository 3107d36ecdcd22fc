"""Figure 6: explosion at the start of training and the article's fixes (C6, C7, C8, C9).

C7 is measured at the edge of stability (the largest trainable learning rate with and
without warm-up, and the sharpness during the first steps); C9 compares coupled L2,
decoupled weight decay (AdamW) and L1 on exploded weights.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

NAME = "training"
TITLE = "Large initial weights explode training; clipping, warm-up at the edge and weight decay"
CLAIMS = ("C6", "C7", "C8", "C9")
METHODS = """Deep ReLU MLPs (He init times a gain g) trained on scikit-learn's digits (fixed
stratified 1437/360 split, standardised pixels), minibatch 64, a warm-up + cosine schedule to
0, every seed and setting of one optimiser vmapped in one compiled program (gradjax.train).
A run is diverged from its first non-finite loss, gradient, update or weight (later steps are
masked). C6/C8: g in a grid, SGD, clip_by_global_norm off (inf) or at 1. C7, at the edge of
stability: a grid of peak learning rates x warm-up off / on x He (g = 1) / large (g = 2)
init, for SGD and Adam. A run "trains" when its final training-set loss is finite and below
the stated threshold; per rate, the fraction of seeds that train (95% Wilson interval); the
edge is the largest rate at which at least half the seeds train, with a 95% bootstrap
interval over seeds (2000 resamples). The early-oscillation statistic is the excess total
variation of the log training loss over the warm-up window, smoothed over a few steps
(sum |diff m| - |m_N - m_0|; 0 for a monotone curve, inf if the run diverges in the window).
Sharpness: the top eigenvalue of the Hessian of the loss on a fixed subset of the training
set, by Lanczos on Hessian-vector products (gradjax.hessian), every few steps of SGD from He
and from the large init, each at its edge with warm-up, without and with warm-up; shown as
lr(t) x sharpness, since gradient descent on a quadratic is stable while that is below 2.
C9: Adam from the exploded init (largest g, clipped so runs stay finite): no penalty,
coupled L2 (lambda w added to the gradient before Adam), decoupled decay (AdamW: lambda w
added after Adam's scaling) and L1 (lambda sign(w)); total weight norm over steps.
Statistics over seeds: median and interquartile range. Minibatch order and initial draws are
shared across settings (common random numbers)."""


def config(quick: bool) -> dict:
    if quick:
        return {
            "depth": 4,
            "width": 32,
            "seeds": 4,
            "steps": 50,
            "batch": 64,
            "lr": 0.05,
            "sigma_w": [1.0, 1.5, 2.0, 3.0],
            "clip": 1.0,
            "sgd_rates": [0.01, 0.04, 0.16, 0.64, 2.56],
            "adam_rates": [1e-4, 1e-3, 0.01, 0.1, 1.0],
            "large_gain": 2.0,
            "warmup_steps": 15,
            "smooth": 3,
            "trained_loss": 1.0,
            "sharpness_seeds": 2,
            "sharpness_every": 5,
            "sharpness_examples": 256,
            "lanczos_steps": 10,
            "c9_lr": 0.01,
            "weight_decay": 0.1,
            "l1": 1e-3,
        }
    return {
        "depth": 8,
        "width": 64,
        "seeds": 8,
        "steps": 150,
        "batch": 64,
        "lr": 0.05,
        "sigma_w": [1.0, 1.5, 2.0, 3.0],
        "clip": 1.0,
        # Factor-2 grids, finer where the edges fall (He and g = 2 init, 150 steps).
        "sgd_rates": [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.45, 0.64, 0.9, 1.28],
        "adam_rates": [1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2],
        "large_gain": 2.0,
        "warmup_steps": 50,
        "smooth": 5,
        "trained_loss": 1.0,
        "sharpness_seeds": 4,
        "sharpness_every": 5,
        "sharpness_examples": 512,
        "lanczos_steps": 16,
        "c9_lr": 0.01,
        "weight_decay": 0.1,
        "l1": 1e-3,
    }


def _c6_rows(cfg: dict) -> list[dict]:
    """C6/C8: init gain x clipping, plain SGD at a moderate rate."""
    rows = []
    for clip in (math.inf, cfg["clip"]):
        for s in cfg["sigma_w"]:
            tag = "clip" if clip != math.inf else "noclip"
            rows.append(dict(name=f"{tag}_s{s:g}", sigma_w=s, clip=clip, lr=cfg["lr"]))
    return rows


def _edge_rows(cfg: dict, opt: str) -> list[dict]:
    """C7: learning-rate grid x warm-up off/on x He / large init."""
    rows = []
    for init, gain in (("he", 1.0), ("large", cfg["large_gain"])):
        for w in (0, cfg["warmup_steps"]):
            for i, lr in enumerate(cfg[f"{opt}_rates"]):
                rows.append(dict(name=f"{opt}_{init}_w{w}_r{i}", sigma_w=gain, lr=lr, warmup=w))
    return rows


def _c9_rows(cfg: dict) -> list[dict]:
    """C9: Adam from the exploded init (largest gain, clipped): no penalty, L2, AdamW, L1."""
    base = dict(sigma_w=max(cfg["sigma_w"]), clip=cfg["clip"], lr=cfg["c9_lr"])
    wd = cfg["weight_decay"]
    return [
        dict(name="c9_none", **base),
        dict(name="c9_l2", wd=wd, **base),
        dict(name="c9_adamw", dwd=wd, **base),
        dict(name="c9_l1", l1=cfg["l1"], **base),
    ]


def _hyper(rows: list[dict], *, penalties: bool) -> dict:
    """The rows zipped into ``gradjax.train``'s hyper axis."""
    hyper = {
        "sigma_w": [r["sigma_w"] for r in rows],
        "clip": [r.get("clip", math.inf) for r in rows],
        "learning_rate": [r["lr"] for r in rows],
        "warmup_steps": [r.get("warmup", 0) for r in rows],
    }
    if penalties:
        hyper["weight_decay"] = [r.get("wd", 0.0) for r in rows]
        hyper["decoupled_weight_decay"] = [r.get("dwd", 0.0) for r in rows]
        hyper["l1"] = [r.get("l1", 0.0) for r in rows]
    return hyper


def largest_trainable(trained: np.ndarray, rates, *, boot: int = 2000, seed: int = 0) -> dict:
    """The largest rate at which most seeds train, with a bootstrap interval over seeds.

    Args:
      trained: ``(rates, seeds)`` booleans.
      rates: the rate grid (increasing).
      boot: bootstrap resamples of the seeds.
      seed: the resampling seed.

    Returns:
      ``{"rate", "low", "high"}``: the largest rate whose fraction of trained seeds is at least
      1/2 (0 when none), and the 2.5/97.5 percentiles of that rate over seed resamples.
    """
    rates = np.asarray(rates, np.float64)
    trained = np.asarray(trained, bool)

    def edge(frac):
        ok = np.nonzero(frac >= 0.5)[0]
        return rates[ok[-1]] if ok.size else 0.0

    n = trained.shape[1]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(boot, n))
    edges = [edge(trained[:, p].mean(axis=1)) for p in picks]
    low, high = np.percentile(edges, [2.5, 97.5], method="nearest")
    return {"rate": float(edge(trained.mean(axis=1))), "low": float(low), "high": float(high)}


def _sharpness(net, data, cfg: dict, settings: list[tuple[float, float]]) -> dict:
    """Top Hessian eigenvalue over the first steps of SGD, warm-up off and on.

    ``settings`` lists ``(peak learning rate, init gain)`` pairs; all of them, both warm-up
    choices and every seed run in one compiled program.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from gradjax.measure.gradients import get_loss
    from gradjax.measure.hessian import hessian_top_eigenvalue
    from gradjax.training import optim

    xent = get_loss("xent")
    w, every = cfg["warmup_steps"], cfg["sharpness_every"]
    horizon = w + 2 * every  # the warm-up and a little after
    n_h = cfg["sharpness_examples"]
    x_h, y_h = data.x_train[:n_h], data.y_train[:n_h]
    tx = optim.mitigation_chain(
        optimizer="sgd",
        learning_rate=1.0,
        total_steps=cfg["steps"],
        warmup_steps=w,
        end_lr_fraction=0.0,
        record_norms=False,
    )

    def run(key, warm, lr, gain):
        params = net.scale(net.init_base(jax.random.fold_in(key, 0)), sigma_w=gain)
        state = optim.set_hyperparams(tx.init(params), warmup_steps=warm, learning_rate=lr)
        n = data.x_train.shape[0]
        order = jax.random.permutation(jax.random.fold_in(key, 1), n)
        idx = jnp.resize(order, (horizon * cfg["batch"],)).reshape(horizon, cfg["batch"])

        def body(carry, i):
            p, s = carry
            loss_fn = lambda q: xent(net.apply(q, data.x_train[i]), data.y_train[i])
            g = jax.grad(loss_fn)(p)
            u, s = tx.update(g, s, p)
            return (optax.apply_updates(p, u), s), p

        _, trail = jax.lax.scan(body, (params, state), idx)
        at = jnp.arange(0, horizon, every)
        snaps = jax.tree.map(lambda a: a[at], trail)
        full_loss = lambda q: xent(net.apply(q, x_h), y_h)
        top = jax.vmap(
            lambda q: (
                hessian_top_eigenvalue(
                    full_loss, q, jax.random.fold_in(key, 2), steps=cfg["lanczos_steps"]
                ).value
            )
        )(snaps)
        lr_t = optim.warmup_cosine(
            at, peak_value=lr, warmup_steps=warm, total_steps=cfg["steps"], end_value=0.0
        )
        return top, jax.vmap(full_loss)(snaps), lr_t

    keys = jax.random.split(jax.random.key(7), cfg["sharpness_seeds"])
    warms = jnp.asarray([0.0, float(w)])
    lrs = jnp.asarray([lr for lr, _ in settings])
    gains = jnp.asarray([gain for _, gain in settings])
    per_seed = jax.vmap(run, in_axes=(0, None, None, None))
    per_warm = jax.vmap(per_seed, in_axes=(None, 0, None, None))
    per_setting = jax.vmap(per_warm, in_axes=(None, None, 0, 0))
    top, loss, lr_t = jax.jit(per_setting)(keys, warms, lrs, gains)
    # (setting, warm-up, seed, snapshot); the rate does not depend on the seed.
    return {
        "steps": np.arange(0, horizon, every),
        "top": np.asarray(top, np.float64),
        "loss": np.asarray(loss, np.float64),
        "lr": np.asarray(lr_t, np.float64)[:, :, 0],
    }


def compute(cfg: dict, progress) -> dict:
    import jax

    import gradjax as gj
    from gradjax.training.loop import train
    from gradjax.training.statistics import early_oscillation, seed_quantiles, wilson_interval

    data = gj.data.digits()
    net = gj.build(
        gj.NetConfig(
            depth=cfg["depth"],
            width=cfg["width"],
            input_dim=data.input_dim,
            out_dim=data.num_classes,
            activation="relu",
            init="he",
        )
    )
    tcfg = gj.TrainConfig(
        optimizer="sgd",
        learning_rate=cfg["lr"],
        steps=cfg["steps"],
        batch_size=cfg["batch"],
        end_lr_fraction=0.0,
    )
    sgd_rows = _c6_rows(cfg) + _edge_rows(cfg, "sgd")
    adam_rows = _edge_rows(cfg, "adam") + _c9_rows(cfg)
    progress(f"SGD: {len(sgd_rows)} settings x {cfg['seeds']} seeds")
    sgd = train(net, data, tcfg, seeds=cfg["seeds"], key=0, hyper=_hyper(sgd_rows, penalties=False))
    progress(f"Adam: {len(adam_rows)} settings x {cfg['seeds']} seeds")
    # optax's Adam computes b1**count with an int count: standard promotion, as users run it.
    with jax.numpy_dtype_promotion("standard"):
        adam = train(
            net,
            data,
            tcfg.replace(optimizer="adam"),
            seeds=cfg["seeds"],
            key=0,
            hyper=_hyper(adam_rows, penalties=True),
        )

    arrays, numbers = {}, {}
    seeds = cfg["seeds"]

    def put(name, hist, i):
        arrays[f"{name}.loss"] = np.asarray(hist.loss[i])
        arrays[f"{name}.weight_norm"] = np.sqrt(
            np.sum(np.asarray(hist.weight_norms[i], np.float64) ** 2, axis=-1)
        )
        arrays[f"{name}.initial_weight_norm"] = np.sqrt(
            np.sum(np.asarray(hist.initial_weight_norms[i], np.float64) ** 2, axis=-1)
        )
        arrays[f"{name}.test_accuracy"] = np.asarray(hist.test.accuracy[i])
        arrays[f"{name}.final_loss"] = np.asarray(hist.train.loss[i])
        arrays[f"{name}.first_nonfinite"] = np.asarray(hist.first_nonfinite[i])

    for rows, res in ((sgd_rows, sgd), (adam_rows, adam)):
        for i, r in enumerate(rows):
            put(r["name"], res.history, i)

    # C6/C8: divergence, accuracy and initial loss per init gain, clipping off/on.
    for r in _c6_rows(cfg):
        name = r["name"]
        rate = wilson_interval(int(np.sum(arrays[f"{name}.first_nonfinite"] >= 0)), seeds)
        acc = seed_quantiles(arrays[f"{name}.test_accuracy"][None], axis=1)
        numbers[f"{name}_divergence_rate"] = float(rate.rate)
        numbers[f"{name}_divergence_ci95"] = [float(rate.low), float(rate.high)]
        numbers[f"{name}_test_acc_median"] = float(acc.median[0])
        numbers[f"{name}_test_acc_iqr"] = [float(acc.q25[0]), float(acc.q75[0])]
        numbers[f"{name}_initial_loss_median"] = float(np.median(arrays[f"{name}.loss"][:, 0]))

    # C7: fraction of seeds that train, per rate, and the largest such rate.
    w = cfg["warmup_steps"]
    for opt in ("sgd", "adam"):
        rates = cfg[f"{opt}_rates"]
        for init in ("he", "large"):
            for ww in (0, w):
                tag = f"{opt}_{init}_w{ww}"
                names = [f"{tag}_r{i}" for i in range(len(rates))]
                final = np.stack([arrays[f"{nm}.final_loss"] for nm in names])
                alive = np.stack([arrays[f"{nm}.first_nonfinite"] < 0 for nm in names])
                trained = alive & np.isfinite(final) & (final < cfg["trained_loss"])
                frac = wilson_interval(trained.sum(axis=1), seeds)
                osc = np.stack(
                    [
                        early_oscillation(arrays[f"{nm}.loss"], steps=w, smooth=cfg["smooth"])
                        for nm in names
                    ]
                )
                numbers[f"{tag}_trained_fraction"] = frac.rate.tolist()
                numbers[f"{tag}_trained_ci95"] = [frac.low.tolist(), frac.high.tolist()]
                numbers[f"{tag}_early_oscillation_median"] = [
                    _finite_or_str(v) for v in np.median(osc, axis=1)
                ]
                edge = largest_trainable(trained, rates)
                numbers[f"{tag}_largest_trainable_lr"] = edge["rate"]
                numbers[f"{tag}_largest_trainable_lr_ci95"] = [edge["low"], edge["high"]]

    # Sharpness during the first steps of SGD, from He and from the large init, each at its
    # edge with warm-up: the largest rate that trains with warm-up (the smallest grid rate if
    # none does), where the no-warm-up run is at or past its own edge.
    inits = (("he", 1.0), ("large", cfg["large_gain"]))
    lr_sharp = {
        init: numbers[f"sgd_{init}_w{w}_largest_trainable_lr"] or cfg["sgd_rates"][0]
        for init, _ in inits
    }
    progress("sharpness: SGD at the warm-up edge, warm-up off/on")
    sh = _sharpness(net, data, cfg, [(lr_sharp[init], gain) for init, gain in inits])
    arrays["sharpness.steps"] = sh["steps"]
    numbers["sharpness_steps"] = sh["steps"].tolist()
    for j, (init, _) in enumerate(inits):
        numbers[f"sharpness_{init}_lr"] = float(lr_sharp[init])
        for k, ww in enumerate((0, w)):
            top = np.where(np.isfinite(sh["top"][j, k]), sh["top"][j, k], np.nan)
            arrays[f"sharpness_{init}_w{ww}.top"] = top
            arrays[f"sharpness_{init}_w{ww}.lr"] = sh["lr"][j, k]
            with warnings.catch_warnings():
                # A snapshot after every seed diverged has no median: NaN, reported as such.
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(top, axis=0)
            numbers[f"sharpness_{init}_w{ww}_median"] = [_finite_or_str(v) for v in med]
            numbers[f"sharpness_{init}_w{ww}_lr_times_median"] = [
                _finite_or_str(v) for v in med * sh["lr"][j, k]
            ]

    # C9: weight-norm trajectories after an explosion, Adam with no penalty, L2, AdamW, L1.
    for r in _c9_rows(cfg):
        name = r["name"]
        ratio = arrays[f"{name}.weight_norm"][:, -1] / arrays[f"{name}.initial_weight_norm"]
        q = seed_quantiles(ratio[None], axis=1)
        acc = seed_quantiles(arrays[f"{name}.test_accuracy"][None], axis=1)
        numbers[f"{name}_weight_norm_final_over_initial_median"] = float(q.median[0])
        numbers[f"{name}_weight_norm_final_over_initial_iqr"] = [float(q.q25[0]), float(q.q75[0])]
        numbers[f"{name}_test_acc_median"] = float(acc.median[0])
    arrays["steps"] = np.arange(1, cfg["steps"] + 1)
    # Keep the cache small: the per-rate curves are summarised above.
    for key in [k for k in arrays if k.startswith(("sgd_", "adam_"))]:
        if not key.endswith(".loss"):
            del arrays[key]
    return {"numbers": numbers, "arrays": arrays}


def _finite_or_str(v) -> float | str:
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else "inf"


def _fmt(v: float) -> str:
    """A sharpness for the report; "nan" once every seed has diverged."""
    return f"{v:.3g}" if math.isfinite(v) else "nan (diverged)"


def _half_step(steps, values) -> str:
    """When the value first falls to half its initial value, in words."""
    hit = [t for t, v in zip(steps, values, strict=True) if v <= values[0] / 2]
    return f"below half its initial value from step {hit[0]}" if hit else "never below half"


def _num(v) -> float:
    return float(v) if not isinstance(v, str) else float(v)


def plot(cfg: dict, result: dict):
    from gradjax.utils.plotting import band, colors, new_figure, sequential_colors, styled

    @styled
    def draw():
        a, n = result["arrays"], result["numbers"]
        steps = a["steps"]
        fig, axes = new_figure(2, 4, width=13.0, height=6.2)
        (ax_c6, ax_c8, ax_sh, ax_c9), (ax_fs, ax_fa, ax_os, ax_oa) = axes
        sig = cfg["sigma_w"]
        for s, col in zip(sig, sequential_colors(len(sig)), strict=True):
            for tag, ls in (("noclip", "-"), ("clip", "--")):
                name = f"{tag}_s{s:g}"
                rate = n[f"{name}_divergence_rate"]
                label = f"$g$={s:g}, {'clip 1' if tag == 'clip' else 'no clip'}: {rate:.0%} div."
                band(ax_c6, steps, a[f"{name}.loss"], color=col, linestyle=ls, label=label)
        ax_c6.set(
            yscale="log",
            xlabel="step",
            ylabel="training loss (nats)",
            title=f"C6/C8: init gain $g$, SGD lr {cfg['lr']:g}",
        )
        ax_c6.legend(fontsize=5.5, ncol=2, loc="upper right")

        x = np.arange(len(sig))
        for k, (tag, col) in enumerate((("noclip", colors(2)[0]), ("clip", colors(2)[1]))):
            med = [n[f"{tag}_s{s:g}_test_acc_median"] for s in sig]
            iqr = np.array([n[f"{tag}_s{s:g}_test_acc_iqr"] for s in sig]).T
            div = [n[f"{tag}_s{s:g}_divergence_rate"] for s in sig]
            off = (k - 0.5) * 0.3
            what = "clip 1" if tag == "clip" else "no clip"
            ax_c8.bar(x + off, div, width=0.28, color=col, alpha=0.35, label=f"diverged, {what}")
            ax_c8.errorbar(
                x + off,
                med,
                yerr=[np.subtract(med, iqr[0]), np.subtract(iqr[1], med)],
                fmt="o",
                color=col,
                markersize=4,
                capsize=2,
                label=f"test accuracy, {what}",
            )
        ax_c8.set(
            xticks=x,
            xticklabels=[f"{s:g}" for s in sig],
            ylim=(0, 1.05),
            xlabel="init gain $g$",
            ylabel="fraction",
            title="C8: diverged (bars), test accuracy (points)",
        )
        ax_c8.legend(fontsize=5.5, loc="lower left", framealpha=0.9, frameon=True)

        w = cfg["warmup_steps"]
        sh_steps = a["sharpness.steps"]
        shown = []
        for init, col in (("he", colors(2)[0]), ("large", colors(2)[1])):
            gain = 1.0 if init == "he" else cfg["large_gain"]
            lr_s = n[f"sharpness_{init}_lr"]
            for ww, ls in ((0, "-"), (w, "--")):
                # lr(t) * lambda_max: gradient descent on a quadratic is stable below 2.
                prod = a[f"sharpness_{init}_w{ww}.top"] * a[f"sharpness_{init}_w{ww}.lr"][None]
                label = f"$g$={gain:g}, lr {lr_s:g}, {'warm-up' if ww else 'no warm-up'}"
                band(ax_sh, sh_steps, prod, color=col, linestyle=ls, label=label, positive=True)
                # Markers too: a run that diverges after its first snapshot has no line.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    med = np.nanmedian(np.where(prod > 0, prod, np.nan), axis=0)
                ax_sh.plot(sh_steps, med, color=col, ls="none", marker="o" if ww else "s", ms=3)
                shown.append(prod[np.isfinite(prod) & (prod > 0)])
        ax_sh.axhline(2.0, color="0.3", ls=":", lw=1.0, label="2 (stability limit)")
        vals = np.concatenate(shown)
        if vals.size:
            ax_sh.set_ylim(min(vals.min(), 2.0) / 1.5, max(vals.max(), 2.0) * 1.5)
        ax_sh.set(
            yscale="log",
            xlabel="step",
            ylabel=r"lr(t) $\times$ sharpness $\lambda_{max}(H)$",
            title="C7: SGD at the warm-up edge, first steps",
        )
        ax_sh.legend(fontsize=5.5)

        c9 = (
            ("c9_none", "no penalty"),
            ("c9_l2", f"L2 (coupled) $\\lambda$={cfg['weight_decay']:g}"),
            ("c9_adamw", f"AdamW (decoupled) $\\lambda$={cfg['weight_decay']:g}"),
            ("c9_l1", f"L1 $\\lambda$={cfg['l1']:g}"),
        )
        for i, (name, label) in enumerate(c9):
            r = a[f"{name}.weight_norm"] / a[f"{name}.initial_weight_norm"][:, None]
            band(ax_c9, steps, r, color=colors(4)[i], label=label)
        ax_c9.set(
            xlabel="step",
            ylabel=r"$\|W\|_F(t)\,/\,\|W\|_F(0)$",
            title=f"C9: Adam lr {cfg['c9_lr']:g} from $g$={max(sig):g} (clip 1)",
        )
        ax_c9.legend(fontsize=5.5)

        styles = {
            ("he", 0): (colors(2)[0], "-", "o"),
            ("he", w): (colors(2)[0], "--", "s"),
            ("large", 0): (colors(2)[1], "-", "o"),
            ("large", w): (colors(2)[1], "--", "s"),
        }
        for opt, ax_f, ax_o in (("sgd", ax_fs, ax_os), ("adam", ax_fa, ax_oa)):
            rates = np.asarray(cfg[f"{opt}_rates"])
            for (init, ww), (col, ls, mk) in styles.items():
                tag = f"{opt}_{init}_w{ww}"
                gain = 1.0 if init == "he" else cfg["large_gain"]
                edge = n[f"{tag}_largest_trainable_lr"]
                label = f"$g$={gain:g}, {'warm-up' if ww else 'no warm-up'}: edge {edge:g}"
                frac = np.asarray(n[f"{tag}_trained_fraction"])
                lo, hi = (np.asarray(v) for v in n[f"{tag}_trained_ci95"])
                ax_f.plot(rates, frac, color=col, ls=ls, marker=mk, ms=3, label=label)
                ax_f.fill_between(rates, lo, hi, color=col, alpha=0.06, lw=0)
                osc = np.asarray([_num(v) for v in n[f"{tag}_early_oscillation_median"]])
                finite = np.isfinite(osc)
                ax_o.plot(
                    rates[finite],
                    np.maximum(osc[finite], 1e-2),
                    color=col,
                    ls=ls,
                    marker=mk,
                    ms=3,
                    label=label,
                )
                ax_o.plot(
                    rates[~finite],
                    np.full((~finite).sum(), 30.0),
                    color=col,
                    ls="none",
                    marker="x",
                    ms=5,
                )
            name = "SGD" if opt == "sgd" else "Adam"
            ax_f.axhline(0.5, color="0.5", lw=0.7, ls=":")
            ax_f.set(
                xscale="log",
                ylim=(-0.02, 1.02),
                xlabel="peak learning rate",
                ylabel="fraction of seeds trained",
                title=f"C7: {name}, final loss < {cfg['trained_loss']:g} (95% Wilson)",
            )
            ax_f.legend(fontsize=5.5, loc="best")
            ax_o.set(
                xscale="log",
                yscale="log",
                ylim=(1e-2, 60),
                xlabel="peak learning rate",
                ylabel="early oscillation (median)",
                title=f"C7: {name}, steps 1-{w} (x: diverged)",
            )
        fig.suptitle(
            f"ReLU MLP, depth {cfg['depth']}, width {cfg['width']}, digits, {cfg['seeds']} seeds"
            " (median and IQR unless noted)",
            fontsize=9,
        )
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    sig = cfg["sigma_w"]
    big = max(sig)
    n = numbers
    out = []
    # C6: large initial weights explode at the start of training.
    base_div = n["noclip_s1_divergence_rate"]
    big_div = n[f"noclip_s{big:g}_divergence_rate"]
    loss_ratio = n[f"noclip_s{big:g}_initial_loss_median"] / n["noclip_s1_initial_loss_median"]
    c6 = (
        "confirmed"
        if (big_div >= 0.5 and base_div == 0)
        else ("nuanced" if big_div > base_div or loss_ratio > 10 else "contradicted")
    )
    first_bad = next((s for s in sig if n[f"noclip_s{s:g}_divergence_rate"] >= 0.5), None)
    out.append(
        {
            "claim": "C6",
            "verdict": c6,
            "summary": (
                f"Divergence rate {base_div:.0%} at He init (g=1) vs {big_div:.0%} at g={big:g}; "
                f"the initial loss is {loss_ratio:.3g}x larger at g={big:g}"
                + (f"; already g={first_bad:g} diverges in most seeds." if first_bad else ".")
            ),
            "numbers": [
                "noclip_s1_divergence_rate",
                f"noclip_s{big:g}_divergence_rate",
                f"noclip_s{big:g}_initial_loss_median",
                "noclip_s1_initial_loss_median",
            ],
        }
    )
    # C8: clipping prevents explosion (divergence) - and does it give a trained network?
    explosive = [s for s in sig if n[f"noclip_s{s:g}_divergence_rate"] > 0]
    if explosive:
        un = np.mean([n[f"noclip_s{s:g}_divergence_rate"] for s in explosive])
        cl = np.mean([n[f"clip_s{s:g}_divergence_rate"] for s in explosive])
        acc_cl = min(n[f"clip_s{s:g}_test_acc_median"] for s in explosive)
        acc_ref = n["noclip_s1_test_acc_median"]
        if cl < un and acc_cl >= acc_ref - 0.05:
            c8 = "confirmed"
        elif cl < un:
            c8 = "nuanced"
        else:
            c8 = "contradicted"
        summary = (
            f"Over g in {explosive}: divergence {un:.0%} without clipping vs {cl:.0%} with "
            f"clip_by_global_norm(1); but the clipped runs reach only {acc_cl:.1%} test "
            f"accuracy (worst g) vs {acc_ref:.1%} at He init: clipping stops the blow-up, "
            "not the bad conditioning of the exploded net."
            if c8 == "nuanced"
            else f"Over g in {explosive}: divergence {un:.0%} without vs {cl:.0%} with clipping; "
            f"clipped accuracy {acc_cl:.1%} vs {acc_ref:.1%} at He init."
        )
    else:
        c8, summary = "nuanced", "No setting diverged without clipping; nothing to prevent."
    out.append(
        {
            "claim": "C8",
            "verdict": c8,
            "summary": summary,
            "numbers": [
                f"noclip_s{big:g}_divergence_rate",
                f"clip_s{big:g}_divergence_rate",
                f"clip_s{big:g}_test_acc_median",
                "noclip_s1_test_acc_median",
            ],
        }
    )
    # C7: at the edge of stability. Warm-up "works" where it raises the largest rate at which
    # most seeds train; the oscillation is compared at the largest rate both schedules train.
    w = cfg["warmup_steps"]
    parts, gains, cited = [], [], []
    for opt in ("sgd", "adam"):
        rates = list(cfg[f"{opt}_rates"])
        for init in ("he", "large"):
            off, on = f"{opt}_{init}_w0", f"{opt}_{init}_w{w}"
            e_off = n[f"{off}_largest_trainable_lr"]
            e_on = n[f"{on}_largest_trainable_lr"]
            ci_off, ci_on = (
                n[f"{off}_largest_trainable_lr_ci95"],
                n[f"{on}_largest_trainable_lr_ci95"],
            )
            cited += [f"{t}_largest_trainable_lr{x}" for t in (off, on) for x in ("", "_ci95")]
            if e_off == 0 and e_on == 0:
                parts.append(f"{opt.upper()} {init}: no rate trains either way")
                continue
            gains.append(e_on / e_off if e_off else math.inf)
            both = min(e_off, e_on)
            osc = ""
            if both > 0:
                i = rates.index(both)
                o_off = _num(n[f"{off}_early_oscillation_median"][i])
                o_on = _num(n[f"{on}_early_oscillation_median"][i])
                osc = f", oscillation at lr {both:g}: {o_off:.3g} -> {o_on:.3g}"
                cited += [f"{off}_early_oscillation_median", f"{on}_early_oscillation_median"]
            parts.append(
                f"{opt.upper()} {init}: edge {e_off:g} [{ci_off[0]:g}, {ci_off[1]:g}] -> "
                f"{e_on:g} [{ci_on[0]:g}, {ci_on[1]:g}]{osc}"
            )
    raised = sum(g > 1 for g in gains)
    if gains and raised == len(gains):
        c7 = "confirmed"
    elif raised:
        c7 = "nuanced"
    else:
        c7 = "contradicted"
    steps_sh = n["sharpness_steps"]
    sharp_parts, sharp_cited = [], []
    for init in ("he", "large"):
        gain = 1.0 if init == "he" else cfg["large_gain"]
        lr_s = n[f"sharpness_{init}_lr"]
        sh0 = [_num(v) for v in n[f"sharpness_{init}_w0_median"]]
        shw = [_num(v) for v in n[f"sharpness_{init}_w{w}_median"]]
        mid = len(steps_sh) // 2
        sharp_parts.append(
            f"g={gain:g}, lr {lr_s:g} (2/lr = {2 / lr_s:.3g}): "
            f"{_fmt(sh0[0])}/{_fmt(sh0[mid])}/{_fmt(sh0[-1])} without warm-up, "
            f"{_fmt(shw[0])}/{_fmt(shw[mid])}/{_fmt(shw[-1])} with it; "
            f"{_half_step(steps_sh, sh0)} without warm-up vs {_half_step(steps_sh, shw)} with it"
        )
        sharp_cited += [
            f"sharpness_{init}_lr",
            f"sharpness_{init}_w0_median",
            f"sharpness_{init}_w{w}_median",
            f"sharpness_{init}_w0_lr_times_median",
            f"sharpness_{init}_w{w}_lr_times_median",
        ]
    out.append(
        {
            "claim": "C7",
            "verdict": c7,
            "summary": (
                f"Largest peak rate at which at least half of {cfg['seeds']} seeds reach a final "
                f"training loss below {cfg['trained_loss']:g} nats, without -> with a {w}-step "
                "warm-up (95% bootstrap interval over seeds): "
                + "; ".join(parts)
                + f". Warm-up raises the edge in {raised} of {len(gains)} cases. Sharpness (top "
                f"Hessian eigenvalue) of SGD at the warm-up edge, steps {steps_sh[0]}/"
                f"{steps_sh[len(steps_sh) // 2]}/{steps_sh[-1]}: " + "; ".join(sharp_parts) + "."
            ),
            "numbers": sorted(set(cited)) + ["sharpness_steps", *sharp_cited],
        }
    )
    # C9: L1/L2 correct exploded weights (Adam: coupled L2, decoupled AdamW decay, L1).
    ratio = {
        k: n[f"c9_{k}_weight_norm_final_over_initial_median"] for k in ("none", "l2", "adamw", "l1")
    }
    acc = {k: n[f"c9_{k}_test_acc_median"] for k in ("none", "l2", "adamw", "l1")}
    best = min(ratio["l2"], ratio["adamw"], ratio["l1"]) / ratio["none"]
    acc_gain = max(acc["l2"], acc["adamw"], acc["l1"]) - acc["none"]
    c9 = (
        "confirmed"
        if best < 0.8 and acc_gain > 0.05
        else ("nuanced" if best < 0.999 else "contradicted")
    )
    out.append(
        {
            "claim": "C9",
            "verdict": c9,
            "summary": (
                f"Adam after an explosion (g={big:g}, clip 1, {cfg['steps']} steps): the total "
                f"weight norm ends at {ratio['none']:.3f} of its initial value with no penalty, "
                f"{ratio['l2']:.3f} with coupled L2, {ratio['adamw']:.3f} with decoupled decay "
                f"(AdamW) and {ratio['l1']:.3f} with L1; test accuracy "
                f"{acc['none']:.1%} / {acc['l2']:.1%} / {acc['adamw']:.1%} / {acc['l1']:.1%}. "
                "Adam normalises a coupled penalty's gradient, so where it dominates the weight "
                "moves by about lr per step whatever lambda; the decoupled decay moves it by "
                "lr * lambda * |w|."
            ),
            "numbers": [f"c9_{k}_weight_norm_final_over_initial_median" for k in ratio]
            + [f"c9_{k}_test_acc_median" for k in acc],
        }
    )
    return out
