"""Figure 12: the gradient through time of recurrent networks against mean-field theory, and
gradient clipping on the kind of model it was invented for (C8, F1)."""

from __future__ import annotations

import numpy as np

NAME = "recurrent"
TITLE = "Through time: ||dL/dh_t|| of tanh RNNs against mean-field theory, an LSTM, and clipping"
CLAIMS = ("C8", "F1")
METHODS = """Flax Linen models as their authors write them: nn.RNN(nn.SimpleCell) with an
orthogonal recurrent kernel of gain s, a LeCun-normal input kernel on inputs of standard
deviation 0.3 (so each step adds variance 0.09 to a pre-activation, as a bias of that variance
would), and a linear head on the last step; an nn.RNN(nn.OptimizedLSTMCell) beside them at
Flax's default init. gradjax.diagnose measures ||dL/dh_t|| at every step t (zero
perturbations added to the carry of the model's own scan) and its growth per step; mean-field
theory predicts sqrt(chi_1) per step with chi_1 from gradjax.mean_field(tanh, s^2, 0.09), and
its critical gain where chi_1 = 1. Gains 0.8x, 1x and 1.4x the critical one, several seeds.
Training: the same tanh RNN at 1.6x the critical gain on a long-range task (the sign of the
first input's first coordinate, read after every step), gradjax.train with SGD and a
hyper-parameter axis clip in {none, 1} (optax.clip_by_global_norm), equal seeds and
minibatches; a run explodes when its global gradient norm (before clipping) exceeds 100x its
first step's or stops being finite."""


def config(quick: bool) -> dict:
    return {
        "width": 16 if quick else 128,
        "steps": 20 if quick else 60,
        "batch": 8 if quick else 32,
        "seeds": 2 if quick else 6,
        "gains": {"ordered": 0.8, "critical": 1.0, "chaotic": 1.4},
        "input_std": 0.3,
        "features": 4,
        "train_gain": 1.6,
        "train_steps": 30 if quick else 300,
        "train_lr": 0.5,
        "train_seeds": 2 if quick else 6,
        "train_examples": 128 if quick else 1024,
        "clip": 1.0,
    }


def _models(width: int, gain: float | None):
    from flax import linen as nn

    class TanhRNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            cell = nn.SimpleCell(width, recurrent_kernel_init=nn.initializers.orthogonal(gain))
            return nn.Dense(2)(nn.RNN(cell)(x)[:, -1])

    class LSTM(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.RNN(nn.OptimizedLSTMCell(width))(x)[:, -1])

    return TanhRNN() if gain is not None else LSTM()


def _batch(cfg: dict, key):
    import jax
    import jax.numpy as jnp

    x = cfg["input_std"] * jax.random.normal(key, (cfg["batch"], cfg["steps"], cfg["features"]))
    return x, jnp.arange(cfg["batch"]) % 2


def _through_time(cfg: dict, progress) -> tuple[dict, dict]:
    """Per-step gradient norms of tanh RNNs at each gain and of an LSTM, by gj.diagnose."""
    import jax

    import gradjax as gj

    v_in = cfg["input_std"] ** 2
    critical = float(gj.theory.critical_sigma_w2("tanh", v_in)) ** 0.5
    numbers: dict = {"critical_gain": critical}
    arrays: dict = {}
    for regime, factor in [*cfg["gains"].items(), ("lstm", None)]:
        progress(f"through time: {regime}")
        gain = None if factor is None else factor * critical
        norms, growth = [], []
        for seed in range(cfg["seeds"]):
            model = _models(cfg["width"], gain)
            x, y = _batch(cfg, jax.random.key(100 + seed))
            variables = model.init(jax.random.key(seed), x)
            report = gj.diagnose(model, variables, (x, y), "xent")
            norms.append(report.time_axis.norms)
            growth.append(report.time_axis.growth_per_step)
        arrays[f"norms_{regime}"] = np.asarray(norms)
        numbers[f"growth_per_step_{regime}"] = float(np.median(growth))
        if gain is not None:
            theory = float(gj.mean_field("tanh", gain**2, v_in).chi1) ** 0.5
            numbers[f"gain_{regime}"] = gain
            numbers[f"theory_growth_per_step_{regime}"] = theory
            numbers[f"growth_rel_err_{regime}"] = abs(np.median(growth) / theory - 1.0)
    return numbers, arrays


def _training(cfg: dict, critical: float, progress) -> tuple[dict, dict]:
    """The long-range task trained with and without clipping (one gj.train call)."""
    import jax
    import jax.numpy as jnp

    import gradjax as gj
    from gradjax.training.data import Dataset

    progress("training with and without clipping")
    n = cfg["train_examples"]
    shape = (cfg["steps"], cfg["features"])
    k_train, k_test = jax.random.split(jax.random.key(7))
    x_train, x_test = (jax.random.normal(k, (n, *shape)) for k in (k_train, k_test))
    label = lambda x: (x[:, 0, 0] > 0).astype(jnp.int32)
    data = Dataset(x_train, label(x_train), x_test, label(x_test), num_classes=2, name="sign")
    model = _models(cfg["width"], cfg["train_gain"] * critical)
    tcfg = gj.TrainConfig(
        optimizer="sgd",
        learning_rate=cfg["train_lr"],
        steps=cfg["train_steps"],
        batch_size=32,
        warmup_steps=0,
    )
    res = gj.train(
        model, data, tcfg, seeds=cfg["train_seeds"], hyper={"clip": [np.inf, cfg["clip"]]}
    )
    loss = np.asarray(res.history.loss, np.float64)  # (clip setting, seed, step)
    grads = np.sqrt(np.sum(np.asarray(res.history.grad_norms, np.float64) ** 2, axis=-1))
    exploded = ~np.all(grads <= 100 * grads[..., :1], axis=-1)  # NaN (diverged) counts too
    numbers = {}
    for i, label_ in enumerate(("noclip", "clip")):
        numbers[f"{label_}_explosion_rate"] = float(np.mean(exploded[i]))
        peak = np.nanmax(loss[i], axis=-1) / loss[i, :, 0]
        numbers[f"{label_}_peak_loss_ratio_median"] = float(np.median(peak))
        numbers[f"{label_}_max_grad_norm_median"] = float(np.median(np.nanmax(grads[i], -1)))
        numbers[f"{label_}_test_accuracy_median"] = float(np.median(res.history.test.accuracy[i]))
    return numbers, {"train_loss": loss, "train_grad_norm": grads}


def compute(cfg: dict, progress) -> dict:
    numbers, arrays = _through_time(cfg, progress)
    more, train_arrays = _training(cfg, numbers["critical_gain"], progress)
    return {"numbers": {**numbers, **more}, "arrays": {**arrays, **train_arrays}}


def plot(cfg: dict, result: dict):
    from gradjax.utils.plotting import band, colors, new_figure, sequential_colors, styled

    @styled
    def draw():
        a, n = result["arrays"], result["numbers"]
        fig, axes = new_figure(1, 3, width=7.2, height=2.9)
        regimes = list(cfg["gains"])
        cols = sequential_colors(len(regimes))
        t = np.arange(cfg["steps"])
        for j, regime in enumerate(regimes):
            norms = a[f"norms_{regime}"]
            band(
                axes[0],
                t,
                norms,
                color=cols[j],
                label=f"{regime}, g={n[f'gain_{regime}']:.2f}",
                positive=True,
            )
            last = np.median(norms[:, -1])
            theory = n[f"theory_growth_per_step_{regime}"]
            axes[0].plot(t, last * theory ** (t[-1] - t), "--", color=cols[j], linewidth=0.9)
        band(
            axes[0],
            t,
            a["norms_lstm"],
            color=colors(5)[4],
            label="LSTM (default init)",
            positive=True,
        )
        axes[0].set(
            yscale="log",
            xlabel="step $t$",
            ylabel=r"$\|\partial L/\partial h_t\|$",
            title="gradient through time (dashed: theory)",
        )
        axes[0].legend(fontsize=6)
        steps = np.arange(1, cfg["train_steps"] + 1)
        for i, (label, color) in enumerate(
            zip(("no clipping", f"clip {cfg['clip']:g}"), colors(2), strict=True)
        ):
            band(axes[1], steps, a["train_loss"][i], color=color, label=label, positive=True)
            band(axes[2], steps, a["train_grad_norm"][i], color=color, label=label, positive=True)
        axes[1].set(
            yscale="log", xlabel="SGD step", ylabel="training loss", title="long-range task: loss"
        )
        axes[2].set(
            yscale="log",
            xlabel="SGD step",
            ylabel=r"$\|\nabla_\theta L\|$ (before clipping)",
            title="global gradient norm",
        )
        axes[1].legend(fontsize=6)
        return fig

    return draw()


def verdicts(cfg: dict, numbers: dict) -> list[dict]:
    n = numbers
    errs = [n[f"growth_rel_err_{r}"] for r in cfg["gains"]]
    f1 = "confirmed" if max(errs) < 0.1 else "nuanced"
    growth = ", ".join(
        f"{r} {n[f'growth_per_step_{r}']:.3f} (theory {n[f'theory_growth_per_step_{r}']:.3f})"
        for r in cfg["gains"]
    )
    un, cl = n["noclip_explosion_rate"], n["clip_explosion_rate"]
    c8 = "confirmed" if cl == 0 and un > 0 else ("nuanced" if cl < un else "contradicted")
    return [
        {
            "claim": "F1",
            "verdict": f1,
            "summary": (
                f"growth of ||dL/dh_t|| per step: {growth}; critical gain "
                f"{n['critical_gain']:.3f}; a default LSTM: {n['growth_per_step_lstm']:.3f}."
            ),
            "numbers": [
                "critical_gain",
                "growth_per_step_lstm",
                *[f"growth_per_step_{r}" for r in cfg["gains"]],
                *[f"theory_growth_per_step_{r}" for r in cfg["gains"]],
            ],
        },
        {
            "claim": "C8",
            "verdict": c8,
            "summary": (
                f"tanh RNN at {cfg['train_gain']:g}x the critical gain: gradient explosions "
                f"(100x the first step's norm) in {un:.0%} of runs without clipping vs {cl:.0%} "
                f"with clip_by_global_norm({cfg['clip']:g}); median peak gradient norm "
                f"{n['noclip_max_grad_norm_median']:.3g} vs {n['clip_max_grad_norm_median']:.3g}; "
                f"peak loss {n['noclip_peak_loss_ratio_median']:.2f}x vs "
                f"{n['clip_peak_loss_ratio_median']:.2f}x the initial loss; "
                f"test accuracy {n['noclip_test_accuracy_median']:.2f} vs "
                f"{n['clip_test_accuracy_median']:.2f}."
            ),
            "numbers": [
                "noclip_explosion_rate",
                "clip_explosion_rate",
                "noclip_max_grad_norm_median",
                "clip_max_grad_norm_median",
                "noclip_peak_loss_ratio_median",
                "clip_peak_loss_ratio_median",
                "noclip_test_accuracy_median",
                "clip_test_accuracy_median",
            ],
        },
    ]
