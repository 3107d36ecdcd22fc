"""The figure of a gradient-flow :class:`~gradjax.diagnosis.report.Report`.

Pure: a report in, a ``matplotlib.figure.Figure`` out, in :mod:`gradjax.utils.plotting`'s style.
Matplotlib is imported inside the functions, so importing gradjax does not import it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gradjax.diagnosis.report import Report

__all__ = ["plot_report"]


_VERDICT_COLORS = {
    "healthy": "#009E73",
    "vanishing": "#0072B2",
    "exploding": "#D55E00",
    "non-finite": "#000000",
    "inconclusive": "#999999",
    "no gradient": "#CC79A7",
}


def plot_report(report: Report, *, title: str | None = None):
    """Plots a :class:`Report`: the per-layer series with region verdicts, parameter groups'
    gradient-to-weight ratios, and the Jacobian spectra or the observed global norms.

    Args:
      report: the report.
      title: a figure title (default: the verdict).

    Returns:
      A matplotlib ``Figure``.
    """
    from gradjax.utils.plotting import styled

    return styled(_plot_report)(report, title=title)


def _plot_report(report: Report, *, title: str | None):
    from gradjax.utils.plotting import PALETTE, new_figure

    fig, axes = new_figure(1, 3, width=7.2, height=3.0)
    ax = axes[0]
    n = len(report.series_values)
    idx = np.arange(1, n + 1)
    vals = np.where(
        np.isfinite(report.series_values) & (report.series_values > 0), report.series_values, np.nan
    )
    start = 1
    for r in report.regions:
        stop = start + len(r.layers)
        ax.axvspan(
            start - 0.5, stop - 0.5, color=_VERDICT_COLORS[r.verdict], alpha=0.12, linewidth=0
        )
        ax.text(
            (start + stop - 1) / 2,
            0.02,
            f"{r.name}\n{r.verdict}",
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=6.5,
            color=_VERDICT_COLORS[r.verdict],
        )
        start = stop
    ax.plot(idx, vals, marker="o", markersize=2.5, color=PALETTE[0])
    ylabel = (
        r"$\|\partial L/\partial a_l\|$"
        if report.series == "activations"
        else (r"$\|\partial L/\partial W_l\|_F$")
    )
    ax.set(
        yscale="log",
        xlabel="layer $l$ (input side first)",
        ylabel=ylabel,
        title=(
            f"gradient per layer (x{report.growth_per_layer:.3g}/layer back)"
            if math.isfinite(report.growth_per_layer)
            else "weight gradient per module (no verdict)"
        ),
    )
    if n and np.isfinite(vals[-1]):
        t = report.thresholds
        ax.axhline(
            vals[-1] * t.vanishing,
            color="0.4",
            linestyle=":",
            linewidth=0.8,
            label=f"{t.vanishing:g}x / {t.exploding:g}x output layer",
        )
        ax.axhline(vals[-1] * t.exploding, color="0.4", linestyle=":", linewidth=0.8)
        ax.legend(loc="upper right", fontsize=6)

    ax = axes[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = report.group_grad_norms / report.group_param_norms
    g = np.arange(len(report.groups))
    ax.bar(g, np.where(np.isfinite(rel) & (rel > 0), rel, np.nan), color=PALETTE[1])
    ax.set(
        yscale="log",
        xlabel="parameter group (execution order)",
        ylabel=r"$\|\nabla_\theta L\| / \|\theta\|$",
        title="gradient/weight ratio per group",
    )
    if len(g) <= 12:
        ax.set_xticks(g, [s[-14:] for s in report.groups], rotation=60, ha="right", fontsize=6)

    _third_panel(axes[2], report)
    fig.suptitle(title or f"gradient flow: {report.verdict} ({report.kind} model)", fontsize=9)
    return fig


def _third_panel(ax: Any, report: Report) -> None:
    """Layer Jacobian spectra when measured, else the gradient through time of each
    recurrence, else the global norms of slices of the batch (or the full-batch norm)."""
    from gradjax.utils.plotting import PALETTE

    if report.spectra:
        li = np.arange(1, len(report.spectra) + 1)
        ax.plot(
            li,
            [s.mean_sq for s in report.spectra],
            marker="o",
            markersize=2.5,
            color=PALETTE[2],
            label=r"mean $\sigma^2$",
        )
        ax.plot(
            li,
            [s.sigma_max**2 for s in report.spectra],
            color=PALETTE[3],
            linestyle="--",
            label=r"$\sigma_{max}^2$",
        )
        ax.axhline(1.0, color="0.4", linestyle=":", linewidth=0.8)
        blocks = bool(report.spectra[0].source)  # maps between the model's own blocks
        ax.set(
            yscale="log",
            xlabel=r"block $l$ (map $a_{l-1} \to a_l$)" if blocks else "layer $l$",
            ylabel=r"singular values$^2$ of $J_l$",
            title="block Jacobian spectra" if blocks else "layer Jacobian spectra",
        )
        if len(li) <= 12:
            ax.set_xticks(li, [s.layer[-12:] for s in report.spectra], rotation=45, fontsize=6)
        ax.legend()
    elif report.time_axes:
        for color, axis in zip(PALETTE, report.time_axes, strict=False):
            values = np.where(axis.norms > 0, axis.norms, np.nan)
            ax.plot(np.arange(len(values)), values, color=color, label=axis.name[-24:])
        ax.set(
            yscale="log",
            xlabel="step (in running order)",
            ylabel=r"$\|\partial L/\partial h_t\|$",
            title="gradient through time",
        )
        ax.legend(fontsize=6)
    else:
        norms = report.microbatch_global_norms
        norms = norms[np.isfinite(norms)]
        if not norms.size:
            from gradjax.utils.plotting import note_panel

            clip = report.clip_threshold
            note_panel(
                ax,
                f"full-batch global norm {report.global_norm:.3g}\n"
                + (f"clip threshold {clip:.3g}" if math.isfinite(clip) else "no clip threshold"),
                center=True,
            )
            ax.set(title="global gradient norm")
        if norms.size:
            ax.hist(norms, bins=max(4, min(20, norms.size)), color=PALETTE[5])
            if math.isfinite(report.clip_threshold):
                ax.axvline(
                    report.clip_threshold,
                    color=PALETTE[3],
                    linestyle="--",
                    label=f"p{report.thresholds.clip_percentile:g} = {report.clip_threshold:.3g}",
                )
                ax.legend()
        ax.set(
            xlabel=r"global gradient norm $\|\nabla_\theta L\|$",
            ylabel="micro-batches",
            title="observed global norms",
        )
