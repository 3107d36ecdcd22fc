"""Verdicts on a gradient-flow measurement: thresholds on the per-layer series and in time.

A per-layer series ``||dL/da_l||`` (input side first) is split into at most three contiguous
regions (input, middle, output); each region's geometric-mean norm is divided by the norm at
the output-most layer, where the gradient enters:

* ``vanishing`` if that ratio is below ``Thresholds.vanishing`` (default 0.1),
* ``exploding`` if it is above ``Thresholds.exploding`` (default 10),
* ``healthy`` otherwise, and ``non-finite`` if any gradient is NaN or infinite.

A recurrence over time is judged the same way along its steps (:func:`judge_time`), and
:func:`judge` reads the whole :class:`Judgement` of one measurement.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gradjax.diagnosis.report import Region, Thresholds
from gradjax.utils.fitting import growth_per_step, growth_rate

__all__ = [
    "Judgement",
    "TimeAxis",
    "classify",
    "judge",
    "judge_time",
    "overall_verdict",
    "regions",
    "steps_beyond",
]


def classify(ratio: float, thresholds: Thresholds) -> str:
    """The verdict for a region whose gradient is ``ratio`` times the output layer's."""
    if not math.isfinite(ratio):
        return "non-finite"
    if ratio < thresholds.vanishing:
        return "vanishing"
    if ratio > thresholds.exploding:
        return "exploding"
    return "healthy"


def regions(names: Sequence[str], values: np.ndarray, thresholds: Thresholds) -> tuple[Region, ...]:
    """Splits a per-layer series into input/middle/output regions and judges each one.

    Args:
      names: layer names, input side first.
      values: gradient norms, same order.
      thresholds: the :class:`Thresholds`.

    Returns:
      The regions (one ``"all"`` region for fewer than three layers).
    """
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return ()
    ref = values[-1]
    parts = (
        [("all", np.arange(n))]
        if n < 3
        else list(zip(("input", "middle", "output"), np.array_split(np.arange(n), 3), strict=True))
    )
    out = []
    for label, idx in parts:
        v = values[idx]
        if not (np.all(np.isfinite(v)) and np.isfinite(ref)):
            ratio = math.nan
        elif ref == 0 and np.all(v == 0):
            # Exactly zero throughout: nothing flows, which is not an overflow.
            out.append(Region(label, tuple(names[i] for i in idx), math.nan, math.nan,
                              "no gradient"))  # fmt: skip
            continue
        elif ref <= 0 or np.any(v <= 0):
            ratio = 0.0 if ref > 0 else math.inf
        else:
            ratio = float(np.exp(np.mean(np.log(v)) - np.log(ref)))
        out.append(
            Region(
                name=label,
                layers=tuple(names[i] for i in idx),
                ratio=ratio,
                growth_per_layer=growth_rate(v),
                verdict=classify(ratio, thresholds),
            )
        )
    return tuple(out)


def steps_beyond(
    names: Sequence[str], values: np.ndarray, thresholds: Thresholds
) -> tuple[Region, ...]:
    """Single steps between neighbouring layers whose ratio alone passes a threshold.

    A region's geometric mean can hide one sharp drop (a 39x fall between two blocks of an
    otherwise flat stack); each such step is a region of its own, named ``"a -> b"``, whose
    ratio is ``||g_a|| / ||g_b||`` (input side over output side).

    Args:
      names: layer names, input side first.
      values: gradient norms, same order.
      thresholds: the thresholds.

    Returns:
      One region per step beyond ``vanishing`` or ``exploding``.
    """
    v = np.asarray(values, np.float64)
    out = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(len(v) - 1):
            if not (np.isfinite(v[k]) and np.isfinite(v[k + 1]) and v[k + 1] > 0):
                continue
            ratio = float(v[k] / v[k + 1])
            verdict = classify(ratio, thresholds)
            if verdict in ("vanishing", "exploding"):
                pair = (names[k], names[k + 1])
                out.append(Region(f"{pair[0]} -> {pair[1]}", pair, ratio, ratio, verdict))
    return tuple(out)


def overall_verdict(regs: Sequence[Region]) -> str:
    """The verdict of a whole series: the worst of its regions.

    Args:
      regs: the regions (:func:`regions`).

    Returns:
      ``"non-finite"`` if any region is, else the verdict of the region whose ratio is
      furthest from 1 in log scale (``"healthy"`` for no regions).
    """
    if not regs:
        return "healthy"
    if any(r.verdict == "non-finite" for r in regs):
        return "non-finite"
    worst = max(regs, key=lambda r: abs(math.log(r.ratio)) if r.ratio > 0 else math.inf)
    return worst.verdict


@dataclasses.dataclass(frozen=True)
class TimeAxis:
    """The gradient over time of one recurrence, and its verdict.

    Attributes:
      name: where the recurrence runs (its module's path, or ``scan_<i>``).
      steps: time indices in the order the recurrence runs them, up to the last one whose
        hidden state reaches the loss.
      norms: ``||dL/dh_t||`` at each (the hidden state; see
        :class:`gradjax.diagnosis.measurement.TimeChain`).
      state_norms: ``||dL/dc_t||`` of the other carry values (an LSTM's cell), or ``None``.
      growth_per_step: the geometric mean of ``||dL/dh_t|| / ||dL/dh_{t+1}||`` (in running
        order) over the pairs where neither has underflowed: the factor by which the
        gradient grows per step on its way back (``nan`` without such a pair).
      underflow_step: the first step the backward pass reaches (walking back from the last
        step run) whose gradient has underflowed to zero or a subnormal, or ``None``.
      regions: the :class:`Region` verdicts of the steps, judged like layers (earliest
        third, middle, latest third against the last step run).
      verdict: the verdict of this recurrence (``"inconclusive"`` when fewer than two steps
        reach the loss).
      step_sigma_max: the top singular value of the step Jacobian ``dh_{t+1}/dh_t`` at every
        step, in time order (``step_jacobians=True``; else ``None``).
      step_mean_sq: its mean squared singular value (the square root is the per-step gain
        mean-field theory predicts), or ``None``.
    """

    name: str
    steps: np.ndarray
    norms: np.ndarray
    state_norms: np.ndarray | None
    growth_per_step: float
    underflow_step: int | None
    regions: tuple[Region, ...]
    verdict: str
    step_sigma_max: np.ndarray | None = None
    step_mean_sq: np.ndarray | None = None


def judge_time(chain: Any, thresholds: Thresholds) -> TimeAxis:
    """Judges one recurrence's per-step gradients like a stack of layers, earliest step first.

    Args:
      chain: a :class:`gradjax.diagnosis.measurement.TimeChain`.
      thresholds: the verdict thresholds.

    Returns:
      The :class:`TimeAxis`.
    """
    v = np.asarray(chain.norms, np.float64)
    # Steps run after the last one whose state reaches the loss (a backward direction read
    # at one end) carry no gradient at all: they are not part of the chain judged.
    reached = np.flatnonzero(~(v == 0))
    v = v[: reached[-1] + 1] if reached.size else v[:0]
    steps = np.asarray(chain.steps)[: len(v)]
    if len(v) < 2:
        return TimeAxis(chain.name, steps, v, chain.state_norms, math.nan, None, (), "inconclusive")
    growth = float(growth_per_step(v, tiny=chain.tiny))
    dead = [k for k in range(len(v) - 1, -1, -1) if np.isfinite(v[k]) and v[k] <= chain.tiny]
    regs = regions([f"t={int(t)}" for t in steps], v, thresholds)
    return TimeAxis(
        name=chain.name,
        steps=steps,
        norms=v,
        state_norms=chain.state_norms,
        growth_per_step=growth,
        underflow_step=int(steps[dead[0]]) if dead else None,
        regions=regs,
        verdict=overall_verdict(regs),
    )


def _distance(regs: Sequence[Region]) -> float:
    """How far the worst region is from a ratio of 1, in log scale."""
    return max(
        (abs(math.log(r.ratio)) if r.ratio > 0 else math.inf for r in regs if r.ratio == r.ratio),
        default=0.0,
    )


@dataclasses.dataclass(frozen=True)
class Judgement:
    """The verdict on one measured flow.

    Attributes:
      series: ``"activations"`` (``||dL/da_l||`` of the blocks) or ``"parameters"`` (weight
        gradients, when there are fewer than two blocks: no gradient-flow verdict then).
      names: the series' entries, input side first.
      values: their norms.
      regions: the :class:`Region` verdicts.
      verdict: the overall verdict: the worse of the axes judged.
      growth_per_layer: the backward growth factor per block (``nan`` for parameters).
      time_axes: one :class:`TimeAxis` per recurrence over time.
      time_axis: the one furthest from healthy (non-finite first), or ``None``.
      axis_verdicts: the verdict of each axis judged, ``{"depth": ..., "time": ...}``.
    """

    series: str
    names: tuple[str, ...]
    values: np.ndarray
    regions: tuple[Region, ...]
    verdict: str
    growth_per_layer: float
    time_axes: tuple[TimeAxis, ...] = ()
    time_axis: TimeAxis | None = None
    axis_verdicts: Mapping[str, str] = dataclasses.field(default_factory=dict)


def judge(flow: Any, thresholds: Thresholds) -> Judgement:
    """Judges a measured flow region by region (:func:`regions`, :func:`overall_verdict`).

    The depth axis reads ``||dL/da_l||`` of the blocks; each recurrence over time reads
    ``||dL/dh_t||`` of its steps (:func:`judge_time`). A model with a recurrence has its
    depth judged only when its blocks are a repeated stack (two or more of one class); the
    overall verdict is that of the axis furthest from healthy.

    Args:
      flow: a :class:`gradjax.diagnosis.measurement.Flow`.
      thresholds: the verdict thresholds.

    Returns:
      The :class:`Judgement`; ``"non-finite"`` whenever a parameter gradient is.
    """
    times = tuple(judge_time(c, thresholds) for c in flow.time_chains)
    stack = len(flow.block_names) >= 2 and (not times or flow.blocks_repeat)
    if stack:
        names, values = flow.block_names, np.asarray(flow.block_grad_norms, np.float64)
        regs = regions(names, values, thresholds) + steps_beyond(names, values, thresholds)
        series, verdict, rate = "activations", overall_verdict(regs), growth_rate(values)
    else:
        keep = [j for j, has in enumerate(flow.group_has_matrices) if has]
        names = tuple(flow.groups[j] for j in keep)
        values = np.asarray(flow.group_weight_grad_norms, np.float64)[keep]
        series, regs, verdict, rate = "parameters", (), "inconclusive", math.nan
    axes = {"depth": verdict} if stack or not times else {}
    worst = None
    judged = [a for a in times if a.verdict != "inconclusive"]
    if judged:
        worst = max(judged, key=lambda a: (a.verdict == "non-finite", _distance(a.regions)))
        axes["time"] = worst.verdict
        if (
            not stack
            or worst.verdict == "non-finite"
            or (verdict != "non-finite" and _distance(worst.regions) > _distance(regs))
        ):
            verdict = worst.verdict
    if not np.all(np.isfinite(flow.leaf_grad_norms)):
        verdict = "non-finite"
    elif flow.leaf_grad_norms.size and not np.any(flow.leaf_grad_norms):
        # A constant loss, a non-differentiable step (round, argmax, an integer cast) or a
        # stop_gradient: no gradient reaches any parameter, which is neither flow nor NaN.
        verdict = "no gradient"
        axes = {k: "no gradient" for k in axes} or {"depth": "no gradient"}
    return Judgement(series, tuple(names), values, regs, verdict, rate, times, worst, axes)
