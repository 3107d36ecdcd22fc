"""Exponential growth fits: the per-layer factor of a quantity that grows or decays with depth.

Every growth rate gradjax reports (a gradient's factor per layer, the cost exponent of a
benchmark) is the least-squares slope of a logarithm, computed here once.
"""

from __future__ import annotations

import math

import numpy as np


def log_slope(x, values, *, axis: int = -1, log_x: bool = False) -> np.ndarray:
    """Least-squares slope of ``log(values)`` against ``x`` (or ``log(x)``) along ``axis``.

    Entries of ``values`` that are non-finite or not positive carry no slope information and
    are dropped per series; a series with fewer than two usable points gives NaN.

    Args:
      x: the abscissae, shape ``(n,)``.
      values: positive values, shape ``(..., n)`` with ``n`` along ``axis``.
      axis: the axis of ``values`` that runs along ``x``.
      log_x: fit against ``log(x)`` (a power-law exponent) instead of ``x``.

    Returns:
      The slopes, shape ``values.shape`` without ``axis`` (float64).
    """
    v = np.moveaxis(np.asarray(values, np.float64), axis, -1)
    t = np.asarray(x, np.float64)
    if log_x:
        t = np.log(t)
    ok = np.isfinite(v) & (v > 0) & np.isfinite(t)
    logs = np.log(np.where(ok, v, 1.0))
    n = ok.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t_mean = (t * ok).sum(-1) / n
        y_mean = (logs * ok).sum(-1) / n
        tc = np.where(ok, t - t_mean[..., None], 0.0)
        slope = (tc * (logs - y_mean[..., None])).sum(-1) / (tc**2).sum(-1)
    return np.where(n >= 2, slope, np.nan)


def growth_per_layer(values, *, axis: int = -1) -> np.ndarray:
    """Backward growth factor per layer of series ordered input side first.

    Args:
      values: positive norms ``g_1..g_L`` (input side first) along ``axis``.
      axis: the layer axis.

    Returns:
      ``exp(-b)`` for the fit ``log g_l = a + b l``: above 1 the quantity grows on its way
      back to the input. NaN for fewer than two finite positive values.
    """
    v = np.asarray(values)
    slope = log_slope(np.arange(v.shape[axis]), v, axis=axis)
    return np.exp(-slope)


def growth_rate(values) -> float:
    """:func:`growth_per_layer` of one series, as a Python float."""
    rate = float(growth_per_layer(values))
    return rate if math.isfinite(rate) else math.nan


def growth_per_step(values, *, tiny: float = 0.0, axis: int = -1) -> np.ndarray:
    """Backward growth factor per step: the geometric mean of ``v_k / v_{k+1}``.

    Over the consecutive pairs where neither value is non-finite or at or below ``tiny``
    (underflowed), so a gradient that reaches zero part-way still has a rate.

    Args:
      values: norms in running order (earliest step first) along ``axis``.
      tiny: values at or below it have underflowed.
      axis: the step axis.

    Returns:
      The factors, shape ``values.shape`` without ``axis`` (NaN without a usable pair).

    Example:
      >>> round(float(growth_per_step([8.0, 4.0, 2.0, 0.0])), 12)
      2.0
    """
    v = np.moveaxis(np.asarray(values, np.float64), axis, -1)
    alive = np.isfinite(v) & (v > tiny)
    pairs = alive[..., :-1] & alive[..., 1:]
    logs = np.log(np.where(alive, v, 1.0))
    steps = np.where(pairs, logs[..., :-1] - logs[..., 1:], 0.0)
    with np.errstate(invalid="ignore"):
        mean = steps.sum(-1) / pairs.sum(-1)
    return np.where(pairs.sum(-1) > 0, np.exp(mean), np.nan)


def crossing(scales, growth) -> float | None:
    """The scale where a growth factor crosses 1 going up, log-linearly interpolated.

    Args:
      scales: increasing positive scales.
      growth: the growth factor at each.

    Returns:
      The first crossing from below 1 to above 1, or ``None`` if there is none.

    Example:
      >>> round(crossing([0.5, 1.0, 2.0], [0.5, 0.8, 1.6]), 6)
      1.25
    """
    logs = np.log(np.where(np.asarray(growth, np.float64) > 0, growth, np.nan))
    s = np.log(np.asarray(scales, np.float64))
    for i in range(len(s) - 1):
        a, b = logs[i], logs[i + 1]
        if np.isfinite(a) and np.isfinite(b) and a <= 0 <= b and a != b:
            return float(np.exp(s[i] + (-a / (b - a)) * (s[i + 1] - s[i])))
    return None


def no_crossing_reason(scales, growth) -> str:
    """Why :func:`crossing` found no scale: where the growth stays over the scales tried."""
    g = np.asarray(growth, np.float64)
    if not np.any(np.isfinite(g)):
        return "the growth is undefined at every scale tried (the gradient is zero or non-finite)"
    lo, hi = float(np.nanmin(g)), float(np.nanmax(g))
    span = (
        f"growth stays between {lo:.3g} and {hi:.3g} from scale {scales[0]:.3g} to {scales[-1]:.3g}"
    )
    if hi / lo < 1.05:
        return span + ": the gradient's growth does not depend on the kernel scale (normalised)"
    return span + (": below 1 throughout" if hi < 1 else ": above 1 throughout")
