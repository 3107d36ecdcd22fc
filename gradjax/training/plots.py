"""Training curves of a :class:`~gradjax.training.results.TrainResult`."""

from __future__ import annotations

import json
import warnings

import numpy as np

from gradjax.training.results import TrainResult


def _hyper_labels(result: TrainResult) -> list[str]:
    hyper = {k: np.asarray(v) for k, v in result.hyper.items()}
    n = int(np.asarray(result.history.loss).shape[0])
    if not hyper:
        return [""] * n
    return [", ".join(f"{k}={hyper[k][i]:g}" for k in sorted(hyper)) for i in range(n)]


def plot_training(result: TrainResult, *, title: str | None = None):
    """Training curves: loss, per-layer gradient norms and weight norms over steps.

    Medians over seeds with interquartile bands (diverged steps left out); one colour per
    entry of the hyper axis; the gradient-norm panel shows the first and the last block.

    Args:
      result: a :class:`TrainResult`.
      title: optional figure title.

    Returns:
      A matplotlib ``Figure``.
    """
    from gradjax.utils.plotting import band, colors, new_figure, styled

    @styled
    def draw():
        h = result.history
        loss = np.asarray(h.loss)
        steps = np.arange(1, loss.shape[-1] + 1)
        labels = _hyper_labels(result)
        cols = colors(len(labels))
        fig, axes = new_figure(1, 3, width=7.0, height=2.6)
        for i, (label, col) in enumerate(zip(labels, cols, strict=True)):
            band(axes[0], steps, loss[i], color=col, label=label or None)
            g = np.asarray(h.grad_norms)[i]
            band(axes[1], steps, g[..., 0], color=col)
            band(axes[1], steps, g[..., -1], color=col, linestyle="--")
            # float64: the squares of a diverging run's float32 norms overflow.
            w = np.sqrt(np.sum(np.asarray(h.weight_norms, np.float64)[i] ** 2, axis=-1))
            band(axes[2], steps, w, color=col)
        axes[0].set(xlabel="step", ylabel="training loss (nats)", yscale="log", title="loss")
        axes[1].set(
            xlabel="step",
            ylabel=r"$\|\partial L/\partial W_l\|_F$",
            yscale="log",
            title="grad norm: layer 1 (—), last (--)",
        )
        axes[2].set(xlabel="step", ylabel=r"$(\sum_l \|W_l\|_F^2)^{1/2}$", title="weight norm")
        if any(labels):
            fig.legend(loc="outside lower center", ncol=min(len(labels), 4), fontsize=7)
        acc = np.asarray(h.test.accuracy)
        meta = json.loads(result.meta)
        net = meta.get("net", {})
        if "class" in net:  # a user's model
            what = f"{net['class']} ({len(result.layers)} weight layers)"
        else:
            what = (
                f"{net.get('activation', '')} depth {net.get('depth', '')} width "
                f"{net.get('width', '')}"
            )
        with warnings.catch_warnings():
            # Every seed of a setting may have diverged: its median accuracy is NaN.
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = ", ".join(f"{np.nanmedian(a):.3f}" for a in acc)
        default = f"{what}, {meta.get('seeds', '')} seeds; median test accuracy {medians}"
        fig.suptitle(title or default, fontsize=9)
        return fig

    return draw()
