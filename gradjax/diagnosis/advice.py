"""Advice from a gradient-flow verdict: the critical weight scale and concrete fixes.

:func:`suggest` turns a verdict and what is known of the model (activation, weight scale,
normalisation, residual blocks, a first-step probe, a training history) into changes, most
important first; :func:`critical_sigma_w2` is the edge-of-chaos weight variance of
mean-field theory (Schoenholz et al. 2017) that the init advice names.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gradjax.diagnosis.report import StepProbe, Thresholds
from gradjax.utils.errors import GradjaxInputError, check_choice, check_real

__all__ = ["ModelHints", "activation_name", "critical_sigma_w2", "suggest"]


@dataclasses.dataclass(frozen=True)
class ModelHints:
    """What the advice needs to know that a model cannot tell about itself.

    A Flax model's normalisation layers and residual blocks are found by inspecting and
    testing it; ``norm`` and ``residual`` here only count for a pure function. The
    activation and the weight scale name the critical initialisation in the advice.

    Attributes:
      activation: the activation (a name, or a function known by its name), or ``None``.
      sigma_w: the current weight scale (std multiplier of ``1/sqrt(fan_in)``), or ``None``.
      sigma_b: the bias standard deviation.
      norm: ``"batch"``, ``"layer"``, ``"group"`` or ``None`` (pure functions only).
      residual: whether the blocks are residual (pure functions only; ``None``: unknown).
    """

    activation: Any = None
    sigma_w: float | None = None
    sigma_b: float = 0.0
    norm: str | None = None
    residual: bool | None = None

    def __post_init__(self) -> None:
        if self.norm is not None:
            check_choice("norm", self.norm, ("batch", "layer", "group"))
        if self.sigma_w is not None:
            check_real("sigma_w", self.sigma_w, minimum=0.0)
        check_real("sigma_b", self.sigma_b, minimum=0.0)


def critical_sigma_w2(activation: str, sigma_b: float = 0.0) -> float | None:
    """The weight variance with chi_1 = 1 (edge of chaos) for ``activation`` at ``sigma_b``.

    Args:
      activation: an activation name.
      sigma_b: bias standard deviation.

    Returns:
      :func:`gradjax.meanfield.theory.critical_sigma_w2` at ``sigma_b^2``, or ``None`` where chi_1
      does
      not cross 1 in the theory module's search range (no critical init to suggest).
    """
    from gradjax.meanfield.theory import critical_sigma_w2 as theory_critical

    try:
        value = float(theory_critical(activation, float(sigma_b) ** 2))
    except GradjaxInputError:
        return None
    return value if math.isfinite(value) else None


_RELU_FAMILY = {"relu": 2.0, "leaky_relu": 2.0 / (1 + 0.01**2)}


def activation_name(activation: Any) -> str | None:
    """The table name of an activation given by name or as a function, else ``None``.

    A function is known by its ``__name__`` when that is a name of gradjax's activation table
    (``jax.nn.gelu`` is ``"gelu"``); anything else has no name (it is never printed as a
    function repr).
    """
    from gradjax.meanfield.activations import ACTIVATIONS

    if activation is None:
        return None
    name = activation if isinstance(activation, str) else getattr(activation, "__name__", None)
    return name if isinstance(name, str) and name in ACTIVATIONS else None


def suggest(
    verdict: str,
    *,
    growth_per_layer: float,
    clip_threshold: float,
    thresholds: Thresholds,
    clip_basis: str = "",
    activation: str | None = None,
    sigma_w: float | None = None,
    sigma_b: float = 0.0,
    norm: str | None = None,
    residual: bool | None = None,
    depth: int | None = None,
    early_spike: float | None = None,
    warmup_steps: int | None = None,
    step_probe: StepProbe | None = None,
    time_axis: Any = None,
    scale_probe: Any = None,
) -> tuple[str, ...]:
    """Concrete changes for a verdict, tied to the standard fixes.

    One weight-scale target is given: the critical one of mean-field theory (chi_1 = 1) when
    the activation and init are declared (a gradjax MLP obeys it), otherwise the kernel
    multiplier where the measured growth per block crosses 1 (``scale_probe``), or the
    measured reason there is none (a normalised stack is scale-invariant).

    Args:
      verdict: the overall verdict.
      growth_per_layer: measured backward growth factor per block.
      clip_threshold: the suggested clipping threshold (``nan`` if none).
      thresholds: the thresholds used.
      clip_basis: the measurement the threshold comes from, in words.
      activation: the activation's table name, if known.
      sigma_w: the current weight scale (std multiplier of ``1/sqrt(fan_in)``), if known.
      sigma_b: the bias standard deviation.
      norm: ``"batch"``, ``"layer"``, ``"group"`` or ``None`` (none found).
      residual: whether the blocks are residual (``None``: unknown).
      depth: number of blocks.
      early_spike: max early global norm over the later median, from a training history.
      warmup_steps: a warm-up length to suggest (default: a tenth of the recorded steps).
      step_probe: the first-step probe, if one was run.
      scale_probe: the measured growth against kernel scale
        (:class:`gradjax.diagnosis.report.ScaleProbe`), if measured.
      time_axis: the recurrence over time the verdict is about
        (:class:`gradjax.diagnosis.verdicts.TimeAxis`), when the verdict comes from the time
        axis; the depth-axis fixes then do not apply.

    Returns:
      Suggestions, most important first.
    """
    if time_axis is not None and verdict in ("vanishing", "exploding"):
        return _time_suggestions(time_axis, verdict)
    out: list[str] = []
    clip = f"{clip_threshold:.3g}" if math.isfinite(clip_threshold) else None
    rate = growth_per_layer
    bad = verdict in ("vanishing", "exploding")
    crit = None
    if activation is not None:
        crit = _RELU_FAMILY.get(activation) or critical_sigma_w2(activation, sigma_b)
    if bad and crit is not None and norm is None:
        now = f" (now sigma_w^2 = {sigma_w**2:.3g})" if sigma_w is not None else ""
        out.append(
            f"use the critical init for {activation} at sigma_b = {sigma_b:g}: "
            f"sigma_w^2 = {crit:.3g}{now}; chi_1 = 1 (edge of chaos)"
            + (", with orthogonal weights for dynamical isometry" if activation == "tanh" else "")
        )
    elif bad and scale_probe is not None:
        out.append(_scale_advice(scale_probe, rate))
    if verdict == "vanishing" and activation == "sigmoid":
        out.append(
            "switch sigmoid to tanh or a ReLU-family activation (sigmoid' <= 0.25 and its "
            "non-zero mean shifts every layer)"
        )
    if verdict == "vanishing":
        out += _vanishing_fixes(norm, residual, depth)
    if verdict in ("exploding", "non-finite"):
        out += _exploding_fixes(clip, clip_basis, norm, residual)
    if verdict == "no gradient":
        out.append(
            "every parameter gradient is exactly zero at this batch: the loss does not depend "
            "on the parameters here (a constant loss, a non-differentiable step such as "
            "jnp.round, argmax or an integer cast, or a stop_gradient between them)"
        )
    if verdict == "inconclusive":
        out.append(
            "no block outputs were found, so no gradient-flow verdict: pass a Flax model "
            "(Linen or NNX) or a function with `perturbations=` to measure ||dL/da_l||"
        )
    if step_probe is not None and step_probe.unstable:
        lr = step_probe.lrs[0]
        out.insert(
            0,
            f"add a learning-rate warm-up: one {step_probe.optimizer} step at lr = {lr:.3g} "
            f"takes the loss from {step_probe.loss0:.4g} to {step_probe.losses[0]:.4g}, while "
            f"lr = {step_probe.safe_lr:.3g} is stable; ramp up, e.g. "
            f"optax.linear_schedule(0.0, {lr:.3g}, transition_steps=...) or "
            "optax.warmup_cosine_decay_schedule (post-LN Transformers need this; pre-LN "
            "usually does not)",
        )
    if step_probe is not None and step_probe.lrs[0] * step_probe.sharpness > (
        limit := step_probe.stability_limit
    ):
        lr, sharp = step_probe.lrs[0], step_probe.sharpness
        kind = "preconditioned sharpness" if step_probe.optimizer == "adam" else "sharpness"
        out.insert(
            0,
            f"add a learning-rate warm-up or a smaller rate: the {kind} at init is "
            f"{sharp:.4g}, so lr x {kind} = {lr * sharp:.3g} is above {limit:g}, where "
            f"{step_probe.optimizer} diverges along the sharpest direction (stable below "
            f"lr = {limit / sharp:.3g})",
        )
    if early_spike is not None and early_spike > thresholds.warmup_spike:
        steps = f" over the first {warmup_steps} steps" if warmup_steps else ""
        out.append(
            f"early global norms reach {early_spike:.3g}x the later median: add a linear "
            f"warm-up{steps}"
        )
    if verdict == "healthy" and not out:
        out.append("gradient flow is within the thresholds; no change needed")
        if clip is not None:
            out.append(
                f"(optional) a clipping safety net: optax.clip_by_global_norm({clip}) "
                f"({clip_basis})"
            )
    # Keep the first occurrence of each suggestion, in order.
    return tuple(dict.fromkeys(out))


def _time_suggestions(axis: Any, verdict: str) -> tuple[str, ...]:
    """Fixes for a gradient that vanishes or explodes over the steps of a recurrence."""
    steps = len(axis.steps)
    measured = (
        f"through {axis.name} the gradient is multiplied by {axis.growth_per_step:.3g} per step "
        f"on its way back ({steps} steps: ||dL/dh|| {axis.norms[0]:.3g} at the first step run, "
        f"{axis.norms[-1]:.3g} at the last)"
    )
    if verdict == "vanishing":
        under = (
            f"; it underflows to zero from t = {axis.underflow_step} back"
            if axis.underflow_step is not None
            else ""
        )
        return (
            measured + under,
            "the early steps barely reach the loss: use a gated cell (nn.OptimizedLSTMCell, "
            "nn.GRUCell), an orthogonal recurrent kernel at gain 1, or a shorter horizon "
            "(truncated backpropagation through time)",
            "find the recurrent kernel scale where growth per step crosses 1 with "
            "`gradjax sweep --model ... --kernels PATTERN` (PATTERN matching the recurrent "
            "kernels only)",
        )
    return (
        measured,
        "clip the global gradient norm (optax.clip_by_global_norm, Pascanu et al. 2013: the "
        "fix invented for recurrent nets) and scale the recurrent kernel down: below "
        "1/gamma in largest singular value (gamma bounding the activation's derivative, 1 "
        "for tanh) the gradient cannot explode",
        "find the recurrent kernel scale where growth per step crosses 1 with "
        "`gradjax sweep --model ... --kernels PATTERN` (PATTERN matching the recurrent "
        "kernels only)",
    )


def _scale_advice(probe: Any, rate: float) -> str:
    """The weight-scale suggestion read from a measured kernel-scale probe."""
    if probe.critical is not None:
        return (
            f"multiply every kernel by {probe.critical:.3g}: measured, the gradient's growth per "
            f"block ({rate:.3g} now) crosses 1 at {probe.critical:.3g}x the kernels"
        )
    if probe.within is not None:
        at = probe.growth[probe.scales.index(probe.within)]
        return (
            f"multiply every kernel by {probe.within:.3g}: measured, the gradient's growth per "
            f"block ({rate:.3g} now) is {at:.3g} there, within the verdict's thresholds over "
            f"the stack; it never crosses 1 ({probe.reason})"
        )
    return f"no weight-scale change flattens the gradient: measured, {probe.reason}"


def _vanishing_fixes(norm: str | None, residual: bool | None, depth: int | None) -> list[str]:
    """Structural fixes for a gradient that fades towards the input."""
    out = []
    if norm is None:
        out.append("add normalisation (LayerNorm, or BatchNorm for large batches)")
    if residual is False:
        scale = f" scaled by 1/sqrt(depth) = {1 / math.sqrt(depth):.3g}" if depth else ""
        out.append(f"add residual connections{scale} (or SkipInit/ReZero, gain 0 at init)")
    if norm is not None and residual:
        out.append(
            "the gradient fades towards the input through normalised residual blocks: "
            "the pattern of post-LN stacks; move the norm before each branch (pre-LN) "
            "or add a learning-rate warm-up"
        )
    return out


def _exploding_fixes(
    clip: str | None, clip_basis: str, norm: str | None, residual: bool | None
) -> list[str]:
    """Clipping (from a measurement, if any) and structural fixes for a growing gradient."""
    if clip is not None:
        out = [f"clip: optax.clip_by_global_norm({clip}) ({clip_basis})"]
    else:
        out = [
            "the measured gradient norms are themselves the explosion, so no clipping "
            "threshold is read from them: fix the cause first, then clip at a multiple of "
            "the fixed model's full-batch global norm (optax.clip_by_global_norm)"
        ]
    if residual:
        out.append("scale the residual branches by 1/sqrt(depth) or use SkipInit")
    if norm == "batch":
        out.append(
            "deep BatchNorm nets explode at init (Yang et al. 2019): use fewer BN layers, "
            "LayerNorm, or residual blocks"
        )
    return out
