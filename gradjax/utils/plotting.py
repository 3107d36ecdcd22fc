"""Figures from results: one style, a colour-blind-safe palette, seeds as bands.

Pure: data in, ``matplotlib.figure.Figure`` out. Matplotlib is imported inside the functions,
so importing gradjax does not import it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Okabe & Ito (2008): distinguishable under the common colour-vision deficiencies.
PALETTE = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.4,
    "legend.frameon": False,
    "axes.prop_cycle": None,  # set from PALETTE in new_figure
}


def colors(n: int) -> list[str]:
    """``n`` palette colours (cycled if more than the palette holds)."""
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def sequential_colors(n: int, cmap: str = "viridis") -> list[Any]:
    """``n`` colours along a perceptually uniform map, for ordered values (e.g. sigma_w)."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    return [cm(v) for v in np.linspace(0.05, 0.9, max(n, 1))]


def _rc() -> dict[str, Any]:
    from cycler import cycler

    style = dict(STYLE)
    style["axes.prop_cycle"] = cycler(color=list(PALETTE))
    return style


def styled(plot_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: runs a plotting function under the gradjax rc style.

    Matplotlib reads rc settings when an artist is made, so the whole function body (not only
    the figure's creation) runs inside the style; the user's global settings are untouched.
    """

    @functools.wraps(plot_fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context(_rc()):
            return plot_fn(*args, **kwargs)

    return wrapper


def new_figure(
    nrows: int = 1, ncols: int = 1, *, width: float = 7.0, height: float = 2.8, **kwargs: Any
):
    """A figure in the gradjax style (a two-column-wide figure is 7 inches).

    Call it from a function decorated with :func:`styled` so labels get the style too.

    Returns:
      ``(fig, axes)`` as :func:`matplotlib.pyplot.subplots` returns them.
    """
    from matplotlib.figure import Figure

    style = _rc()
    import matplotlib

    with matplotlib.rc_context(style):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=kwargs.pop("squeeze", True), **kwargs)
    fig._gradjax_style = style  # so save_figure renders with the same rc settings
    return fig, axes


def band(
    ax,
    x: np.ndarray,
    samples: np.ndarray,
    *,
    color: Any,
    label: str | None = None,
    axis: int = 0,
    linestyle: str = "-",
    alpha: float = 0.22,
    positive: bool = False,
) -> int:
    """Median line with an interquartile band over ``axis`` (the seeds).

    Non-finite samples (diverged runs) are ignored, not allowed to poison the statistics.
    Where no sample is left at a point, the line has a gap, marked by an ``x`` of the line's
    colour on the bottom edge of the panel, so a diverged or overflowed stretch is visible
    rather than silently missing.

    Args:
      ax: the axes.
      x: positions, one per point.
      samples: values with a seed axis ``axis``.
      color: line and band colour.
      label: legend label.
      axis: the seed axis of ``samples``.
      linestyle: the median line's style.
      alpha: the band's opacity.
      positive: also drop values <= 0 (for a log-scaled panel).

    Returns:
      How many samples were dropped (non-finite, or <= 0 with ``positive``).
    """
    import warnings

    x = np.asarray(x)
    samples = np.asarray(samples, dtype=np.float64)
    keep = np.isfinite(samples) & ((samples > 0) if positive else True)
    samples = np.where(keep, samples, np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        med = np.nanmedian(samples, axis=axis)
        lo = np.nanpercentile(samples, 25, axis=axis)
        hi = np.nanpercentile(samples, 75, axis=axis)
    ax.plot(x, med, color=color, label=label, linestyle=linestyle)
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, linewidth=0)
    gaps = ~np.isfinite(med)
    if np.any(gaps):
        ax.plot(
            x[gaps],
            np.zeros(int(gaps.sum())),
            linestyle="none",
            marker="x",
            markersize=4,
            color=color,
            transform=ax.get_xaxis_transform(),  # y in axes units: the bottom edge
            clip_on=False,
        )
    return int(keep.size - np.count_nonzero(keep))


def log_scale(ax, *data: Any, axis: str = "y") -> None:
    """Log-scales ``axis`` of ``ax`` if ``data`` has a positive finite value; notes the rest.

    Values that are zero, negative, NaN or infinite cannot be drawn on a log scale. When
    some are, the panel says how many were left out; when all are, the axis stays linear
    and the panel says why it is empty, instead of matplotlib's "cannot be log-scaled".

    Args:
      ax: the axes.
      *data: the arrays drawn on the panel.
      axis: ``"y"`` or ``"x"``.
    """
    values = np.concatenate([np.asarray(d, dtype=np.float64).ravel() for d in data] or [[]])
    good = int(np.count_nonzero(np.isfinite(values) & (values > 0)))
    bad = values.size - good
    if good:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        if bad:
            note_panel(
                ax, f"{bad} of {values.size} values <= 0 or non-finite\nnot drawn (x: none left)"
            )
    else:
        note_panel(ax, _empty_note(values), center=True)


def _empty_note(values: np.ndarray) -> str:
    kinds = [
        name
        for name, mask in (
            ("NaN", np.isnan(values)),
            ("infinite", np.isinf(values)),
            ("<= 0", np.isfinite(values) & (values <= 0)),
        )
        if np.any(mask)
    ]
    what = ", ".join(kinds) if kinds else "no data"
    return f"nothing to draw on a log scale\n(all values: {what})"


def note_panel(ax, text: str, *, center: bool = False) -> None:
    """Writes a small note on a panel (bottom left, or centred for an empty panel)."""
    ax.text(
        0.5 if center else 0.02,
        0.5 if center else 0.04,
        text,
        transform=ax.transAxes,
        ha="center" if center else "left",
        va="center" if center else "bottom",
        fontsize=6.5,
        color="0.3",
        in_layout=False,  # a note must not shrink the panel it annotates
    )


def _guard_log_axes(fig) -> None:
    # A log axis with no positive finite data makes savefig raise "cannot be log-scaled";
    # such a panel is drawn linear with a note, so the figure (and the run) is never lost.
    for ax in fig.get_axes():
        for name in ("y", "x"):
            if getattr(ax, f"get_{name}scale")() != "log":
                continue
            minpos = ax.dataLim.minposy if name == "y" else ax.dataLim.minposx
            if not np.isfinite(minpos):
                getattr(ax, f"set_{name}scale")("linear")
                note_panel(ax, f"nothing to draw on a log {name} axis\n(no positive finite values)")


def save_figure(
    fig, stem: str | os.PathLike, *, formats: Sequence[str] = ("png", "pdf")
) -> list[Path]:
    """Writes ``stem.png`` and a vector ``stem.pdf`` atomically.

    Each file is written to a uniquely named temporary file and renamed into place
    (:func:`gradjax.utils.files.atomic_write`), so two processes saving the same figure never share
    a
    temporary file and a reader never sees half a file. A log axis without positive finite
    data is drawn linear, with a note, rather than failing.

    Args:
      fig: the figure.
      stem: path without suffix.
      formats: file formats to write.

    Returns:
      The written paths.
    """
    import matplotlib

    from gradjax.utils.files import atomic_write

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    style = getattr(fig, "_gradjax_style", {})
    with matplotlib.rc_context(style):
        _guard_log_axes(fig)
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            atomic_write(path, lambda f, fmt=fmt: fig.savefig(f, format=fmt), binary=True)
            paths.append(path)
    return paths


@styled
def plot_sweep_layers(result: Any, *, title: str | None = None):
    """Per-layer gradient norms and Jacobian spectra against layer, one colour per sigma_w.

    Args:
      result: a :class:`gradjax.SweepResult` of
        :func:`gradjax.measure.probes.layer_gradient_and_spectrum_probe` with axes (seed, sigma_w).

    Returns:
      The figure: ||dL/dW_l||, mean squared singular value of J_l, and the condition number
      of J_l against layer l, medians over seeds with interquartile bands.
    """
    sigma_w = result.coords["sigma_w"]
    grads = result["gradients.weights"]  # (seed, sigma_w, layer)
    mean_sq = np.concatenate(
        [result["spectra.first.mean_sq"][..., None], result["spectra.hidden.mean_sq"]], axis=-1
    )
    cond = np.concatenate(
        [result["spectra.first.condition"][..., None], result["spectra.hidden.condition"]],
        axis=-1,
    )
    layers = np.arange(1, grads.shape[-1] + 1)
    fig, axes = new_figure(1, 3, width=7.2, height=3.0)
    cols = sequential_colors(len(sigma_w))
    for i, sw in enumerate(sigma_w):
        label = f"$\\sigma_w$={sw:.2f}"
        band(axes[0], layers, grads[:, i], color=cols[i], label=label, positive=True)
        band(axes[1], layers, mean_sq[:, i], color=cols[i], positive=True)
        band(axes[2], layers, cond[:, i], color=cols[i], positive=True)
    for ax, values in zip(axes, (grads, mean_sq, cond), strict=True):
        log_scale(ax, values)
    axes[0].set(
        xlabel="layer $l$",
        ylabel=r"$\|\partial L/\partial W_l\|_F$",
        title="gradient norm per layer",
    )
    axes[1].set(
        xlabel="layer $l$",
        ylabel=r"mean $\sigma^2(J_l)$",
        title=r"mean $\sigma^2$ of $J_l$ (chain-rule factor)",
    )
    axes[1].axhline(1.0, color="0.4", linewidth=0.8, linestyle=":")
    axes[2].set(
        xlabel="layer $l$",
        ylabel=r"$\sigma_{max}/\sigma_{min}$ of $J_l$",
        title="condition number of $J_l$",
    )
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(sigma_w), 8)
    )
    cfg = result.meta.get("net", {})
    fig.suptitle(
        title
        or f"{cfg.get('activation')} net, depth {cfg.get('depth')}, width {cfg.get('width')}: "
        f"median and IQR over {grads.shape[0]} seeds",
        fontsize=9,
    )
    return fig


@styled
def plot_growth_curves(scales: np.ndarray, curves: dict[str, np.ndarray], *, title: str):
    """Backward growth factors against the kernel scale, with the critical line at 1.

    Args:
      scales: the kernel scales swept.
      curves: label -> mean growth factor at each scale (per block, per step, ...).
      title: the figure title.

    Returns:
      The figure, log-log, each curve's crossing of 1 marked.
    """
    fig, ax = new_figure(1, 1, width=4.2, height=3.2)
    for color, (label, values) in zip(colors(len(curves)), curves.items(), strict=False):
        ax.plot(scales, values, marker="o", markersize=3, color=color, label=f"growth {label}")
    ax.axhline(1.0, color="0.4", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    log_scale(ax, *curves.values())
    ax.set(xlabel=r"kernel scale $\sigma_w$", ylabel="backward growth factor", title=title)
    ax.legend(loc="best")
    return fig
