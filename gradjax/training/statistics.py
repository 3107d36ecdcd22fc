"""Statistics over seeds of training histories: quantiles, divergence rates, early oscillation."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gradjax.training.results import TrainHistory
from gradjax.utils.errors import invalid
from gradjax.utils.pytree import pytree_dataclass, static_field


@pytree_dataclass
class Quantiles:
    """Median and interquartile range over seeds (NaN-aware: diverged runs are left out).

    Attributes:
      median: the median over seeds.
      q25: the 25th percentile.
      q75: the 75th percentile.
      count: how many seeds contributed (finite values).
    """

    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    count: np.ndarray


def seed_quantiles(values: Any, *, axis: int = 1) -> Quantiles:
    """Median and IQR over the seed axis, ignoring non-finite (masked) entries.

    Args:
      values: an array with a seed axis (axis 1 of :class:`TrainHistory` arrays).
      axis: the seed axis.

    Returns:
      :class:`Quantiles` (NaN where no seed is finite).
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = np.where(np.isfinite(arr), arr, np.nan)
    count = np.sum(np.isfinite(arr), axis=axis)
    with warnings.catch_warnings():
        # An all-NaN slice (every seed diverged) is a valid outcome: its quantiles are NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanpercentile(arr, [50, 25, 75], axis=axis)
    return Quantiles(median=q[0], q25=q[1], q75=q[2], count=count)


@pytree_dataclass
class Rate:
    """A proportion over seeds with its 95% Wilson score interval."""

    rate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int = static_field()


def wilson_interval(successes: Any, n: int, *, z: float = 1.959964) -> Rate:
    """The 95% Wilson score interval of a binomial proportion (Wilson 1927).

    Args:
      successes: counts (array-like).
      n: number of trials.
      z: the normal quantile (1.96 for 95%).

    Returns:
      A :class:`Rate`.
    """
    k = np.asarray(successes, dtype=np.float64)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return Rate(rate=p, low=centre - half, high=centre + half, n=int(n))


def divergence_rate(history: TrainHistory, *, axis: int = 1) -> Rate:
    """Fraction of seeds whose run became non-finite, with a Wilson 95% interval."""
    diverged = np.asarray(history.first_nonfinite) >= 0
    return wilson_interval(diverged.sum(axis=axis), diverged.shape[axis])


def early_oscillation(loss: Any, *, steps: int, smooth: int = 1) -> np.ndarray:
    """Excess total variation of log-loss over the first ``steps`` steps.

    ``sum_t |m_{t+1} - m_t| - |m_last - m_first|`` where ``m`` is log L averaged over a moving
    window of ``smooth`` steps (1: the raw curve). Zero for a monotone curve, the summed size
    of every up-and-down swing otherwise; smoothing over a few steps removes the step-to-step
    minibatch noise and keeps the swings that last longer (the early instability warm-up is
    meant to remove). A run that diverges in the window gets ``inf``.

    Args:
      loss: ``(..., n_steps)`` loss curves (NaN after divergence).
      steps: the window length (>= 2).
      smooth: moving-average length in steps (>= 1, < steps).

    Returns:
      ``(...)`` the statistic.
    """
    if isinstance(smooth, bool) or not isinstance(smooth, int) or not 1 <= smooth < steps:
        raise invalid("smooth", smooth, f"an integer in [1, {steps})")
    window = np.log(np.asarray(loss, dtype=np.float64)[..., :steps])
    if smooth > 1:
        c = np.cumsum(window, axis=-1)
        c = np.concatenate([np.zeros_like(c[..., :1]), c], axis=-1)
        window = (c[..., smooth:] - c[..., :-smooth]) / smooth
    tv = np.sum(np.abs(np.diff(window, axis=-1)), axis=-1)
    net = np.abs(window[..., -1] - window[..., 0])
    out = tv - net
    return np.where(np.isfinite(out), out, np.inf)


def early_peak(loss: Any, *, steps: int) -> np.ndarray:
    """Largest loss over the first ``steps`` steps divided by the initial loss (inf if the
    run diverged within them)."""
    window = np.asarray(loss, dtype=np.float64)[..., :steps]
    peak = np.max(np.where(np.isfinite(window), window, np.inf), axis=-1)
    return peak / window[..., 0]
