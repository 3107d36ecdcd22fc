"""Diagnose the gradient flow of any model: Flax Linen, Flax NNX, a pure JAX function.

:func:`diagnose` takes a model as its user wrote it (through :mod:`gradjax.boundary`), one
batch and a loss, and measures in one compiled program, cached by the model's structure and
the shapes so that a second call reuses it:

* ``||dL/da_l||`` for the output ``a_l`` of every block (the repeated submodules: Transformer
  blocks, residual blocks, the layers of an ``nn.scan`` stack), captured without any change
  to the model's code,
* the gradient norm of every parameter leaf and module group (one per layer for a stack),
* the global gradient norm of ``microbatches`` slices of the batch (each slice's share of
  the full-batch gradient, times ``n / size``: for a mean loss without batch coupling the
  gradient of that slice alone), through the same compiled program: the observed
  distribution a clipping threshold is read from,
* whether the blocks are residual: with every kernel inside the blocks set to zero, does the
  first block's output still reach the loss? (two more runs of the same program)

Verdicts come only from gradient flow, the series ``||dL/da_l||``. It is split into at most
three contiguous regions (input, middle, output); each region's geometric-mean norm is
divided by the norm at the output-most block, where the gradient enters:

* ``vanishing`` if that ratio is below ``Thresholds.vanishing`` (default 0.1),
* ``exploding`` if it is above ``Thresholds.exploding`` (default 10),
* ``healthy`` otherwise, and ``non-finite`` if any gradient is NaN or infinite.

Where no block outputs exist (a pure function without ``perturbations``, a model with fewer
than two blocks) the report shows the parameter-gradient norms and says ``inconclusive``:
a weight gradient ``delta_l a_{l-1}^T`` mixes forward and backward signals and is no
gradient-flow measurement.

The per-layer growth rate is ``exp(-slope)`` of a least-squares line through
``log ||g_l||`` against ``l`` (:func:`gradjax.fitting.growth_rate`): the factor by which the
gradient is multiplied per block on its way back (mean-field theory predicts
``sqrt(chi_1)`` for a random MLP, Schoenholz et al. 2017).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.boundary import Boundary, first_use, wrap
from gradjax.errors import GradjaxInputError, check_choice, check_int, check_real, invalid
from gradjax.fitting import growth_rate
from gradjax.io import json_safe
from gradjax.tree_paths import layer_slices, module_parts, natural_key

LossLike = str | Callable[[Any, Any], jax.Array]

VERDICTS = ("healthy", "vanishing", "exploding", "non-finite", "inconclusive")
# Compiled measuring programs by (model structure, shapes, loss, options); bounded.
_PROGRAMS: dict[Hashable, Callable[..., Any]] = {}
_MAX_PROGRAMS = 32
# Whether a model's blocks are residual, and its output shapes, by (structure, shapes).
_RESIDUAL: dict[Hashable, bool | None] = {}
_OUTPUTS: dict[Hashable, Any] = {}

__all__ = [
    "Comparison",
    "Report",
    "Thresholds",
    "classify",
    "critical_sigma_w2",
    "diagnose",
    "diagnose_net",
    "growth_rate",
    "natural_key",
    "plot_report",
    "regions",
    "suggest",
]


# ---------------------------------------------------------------------------- thresholds


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The stated thresholds behind every verdict.

    Attributes:
      vanishing: a region whose geometric-mean gradient norm is below ``vanishing`` times the
        output-most layer's is vanishing (default 0.1, one decade).
      exploding: above ``exploding`` times the output-most layer's is exploding (default 10).
      clip_percentile: the percentile of the observed global gradient norms suggested as the
        ``clip_by_global_norm`` threshold (default 90).
      warmup_spike: in a recorded training history, a warm-up is suggested when the largest
        global norm of the first tenth of the steps exceeds ``warmup_spike`` times the median
        of the rest (default 10).
      step_gain: the first optimiser step at the planned learning rate is unstable when its
        loss decrease is below ``step_gain`` times the best decrease among the halved rates
        (default 0.5).
    """

    vanishing: float = 0.1
    exploding: float = 10.0
    clip_percentile: float = 90.0
    warmup_spike: float = 10.0
    step_gain: float = 0.5

    def __post_init__(self) -> None:
        check_real("thresholds.vanishing", self.vanishing, strictly_positive=True)
        check_real("thresholds.exploding", self.exploding, strictly_positive=True)
        if not self.vanishing < 1.0 < self.exploding:
            raise invalid(
                "thresholds",
                (self.vanishing, self.exploding),
                "vanishing < 1 < exploding",
            )
        check_real("thresholds.clip_percentile", self.clip_percentile, minimum=0.0)
        if self.clip_percentile > 100:
            raise invalid("thresholds.clip_percentile", self.clip_percentile, "a number <= 100")
        check_real("thresholds.warmup_spike", self.warmup_spike, strictly_positive=True)
        check_real("thresholds.step_gain", self.step_gain, strictly_positive=True)


# ---------------------------------------------------------------------------- the report


@dataclasses.dataclass(frozen=True)
class Region:
    """One contiguous region of the per-layer series and its verdict.

    Attributes:
      name: ``"input"``, ``"middle"``, ``"output"`` or ``"all"``.
      layers: the layer names it covers (input side first).
      ratio: geometric-mean gradient norm of the region over the output-most layer's.
      growth_per_layer: backward growth factor per layer inside the region (``nan`` for one
        layer).
      verdict: one of :data:`VERDICTS`.
    """

    name: str
    layers: tuple[str, ...]
    ratio: float
    growth_per_layer: float
    verdict: str


@dataclasses.dataclass(frozen=True)
class LayerSpectrum:
    """Singular-value summary of one layer's Jacobian ``da_l/da_{l-1}`` (one example)."""

    layer: str
    mean_sq: float
    sigma_max: float
    sigma_min: float
    condition: float


@dataclasses.dataclass(frozen=True)
class StepProbe:
    """The loss after one first optimiser step at the planned rate and at smaller ones.

    Adam's first update is exactly ``-lr * sign(g)`` (bias-corrected moments of one gradient,
    ``eps`` aside), so this tells, before training, whether the planned learning rate already
    overshoots at step one: the situation a warm-up exists for (Liu et al. 2020; Xiong et al.
    2020 for post-LN Transformers).

    Attributes:
      optimizer: ``"adam"`` (step ``-lr sign(g)``) or ``"sgd"`` (step ``-lr g``).
      lrs: the probed rates, the planned one first, then halvings.
      losses: the loss after one step at each rate.
      loss0: the loss before the step.
      unstable: the planned step gains less than ``Thresholds.step_gain`` of the best
        decrease among the rates (or raises the loss).
      safe_lr: the largest probed rate whose decrease is at least that fraction of the best.
    """

    optimizer: str
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    loss0: float
    unstable: bool
    safe_lr: float


@dataclasses.dataclass(frozen=True)
class Report:
    """What :func:`diagnose` found: measurements, verdicts and suggestions.

    Attributes:
      kind: ``"linen"``, ``"nnx"`` or ``"function"``.
      loss: loss on the batch.
      leaf_names: parameter leaves in execution order (input side first).
      leaf_grad_norms: ``||dL/dtheta||`` per leaf.
      leaf_param_norms: ``||theta||`` per leaf.
      groups: module-path groups in execution order.
      group_grad_norms: gradient norm of each group (all its leaves).
      group_weight_grad_norms: gradient norm of each group's matrices/kernels only (``nan``
        for groups without one, e.g. a LayerNorm).
      group_param_norms: parameter norm of each group.
      activation_names: exposed activations in execution order.
      activation_grad_norms: ``||dL/da||`` for each, over the whole batch.
      series: ``"activations"`` or ``"parameters"``: which series the verdict reads.
      series_names: its layer names, input side first.
      series_values: its norms.
      growth_per_layer: backward growth factor per layer over the whole series.
      regions: the :class:`Region` verdicts.
      verdict: overall verdict.
      global_norm: the batch's global gradient norm.
      microbatch_global_norms: global norms of the micro-batches (the observed distribution).
      clip_threshold: the suggested ``clip_by_global_norm`` threshold (the
        ``clip_percentile``-th percentile of the observed norms; of ``norm_history`` when one is
        given), or ``nan`` if nothing was observed.
      spectra: per-layer Jacobian summaries (empty unless ``layers`` was given).
      step_probe: the first-step probe (``None`` unless ``lr`` was given).
      suggestions: concrete changes, most important first.
      thresholds: the :class:`Thresholds` used.
      context: what the caller said about the model (activation, sigma_w, ...).
    """

    kind: str
    loss: float
    leaf_names: tuple[str, ...]
    leaf_grad_norms: np.ndarray
    leaf_param_norms: np.ndarray
    groups: tuple[str, ...]
    group_grad_norms: np.ndarray
    group_weight_grad_norms: np.ndarray
    group_param_norms: np.ndarray
    activation_names: tuple[str, ...]
    activation_grad_norms: np.ndarray
    series: str
    series_names: tuple[str, ...]
    series_values: np.ndarray
    growth_per_layer: float
    regions: tuple[Region, ...]
    verdict: str
    global_norm: float
    microbatch_global_norms: np.ndarray
    clip_threshold: float
    spectra: tuple[LayerSpectrum, ...]
    step_probe: StepProbe | None
    suggestions: tuple[str, ...]
    thresholds: Thresholds
    context: dict[str, Any]

    # -------------------------------------------------------------- views

    def summary(self) -> str:
        """A readable text report: verdicts, the per-layer table and the suggestions."""
        t = self.thresholds
        lines = [
            f"gradient-flow report ({self.kind} model, loss {self.loss:.4g})",
            f"verdict: {self.verdict.upper()}   backward growth per block: "
            f"{self.growth_per_layer:.3g}   global grad norm: {self.global_norm:.3g}",
            f"thresholds: vanishing if region/output-layer gradient ratio < {t.vanishing:g}, "
            f"exploding if > {t.exploding:g}",
            _structure_line(self.context),
            "",
            f"{'region':<8} {'layers':>7} {'ratio':>10} {'growth/layer':>13}  verdict",
        ]
        for r in self.regions:
            lines.append(
                f"{r.name:<8} {len(r.layers):>7d} {r.ratio:>10.3g} {r.growth_per_layer:>13.3g}"
                f"  {r.verdict}"
            )
        if self.series == "parameters":
            lines += [
                "",
                "no block outputs found: the series below is ||dL/dW|| per module, which is not "
                "a gradient-flow measurement; no verdict is drawn from it",
            ]
        label = "||dL/da_l|| per block" if self.series == "activations" else "||dL/dW||"
        lines += ["", f"per-layer series ({label}, input side first):"]
        width = max([len(n) for n in self.series_names] + [5])
        lines.append(f"  {'layer':<{width}} {'||grad||':>10}")
        for name, value in zip(self.series_names, self.series_values, strict=True):
            lines.append(f"  {name:<{width}} {value:>10.3g}")
        lines += ["", "parameter groups (execution order):"]
        width = max([len(g) for g in self.groups] + [5])
        lines.append(f"  {'group':<{width}} {'||grad||':>10} {'||param||':>10} {'ratio':>10}")
        for g, gn, pn in zip(
            self.groups, self.group_grad_norms, self.group_param_norms, strict=True
        ):
            rel = gn / pn if pn > 0 else math.inf
            lines.append(f"  {g:<{width}} {gn:>10.3g} {pn:>10.3g} {rel:>10.3g}")
        if self.spectra:
            lines += ["", "layer Jacobians (first example):"]
            lines.append(f"  {'layer':<8} {'mean s^2':>10} {'s_max':>10} {'s_min':>10}")
            for s in self.spectra:
                lines.append(
                    f"  {s.layer:<8} {s.mean_sq:>10.3g} {s.sigma_max:>10.3g} {s.sigma_min:>10.3g}"
                )
        if self.step_probe is not None:
            sp = self.step_probe
            steps = ", ".join(f"{lr:.3g}: {v:.4g}" for lr, v in zip(sp.lrs, sp.losses, strict=True))
            lines += [
                "",
                f"first {sp.optimizer} step (loss before {sp.loss0:.4g}) -> {steps}",
                f"  planned lr {sp.lrs[0]:.3g} is {'UNSTABLE' if sp.unstable else 'stable'}; "
                f"largest stable probed lr {sp.safe_lr:.3g}",
            ]
        if math.isfinite(self.clip_threshold):
            lines += [
                "",
                f"observed global norms: median {np.median(self.microbatch_global_norms):.3g}, "
                f"p{t.clip_percentile:g} = {self.clip_threshold:.3g}",
            ]
        lines += ["", "suggestions:"]
        lines += [f"  {i + 1}. {s}" for i, s in enumerate(self.suggestions)] or ["  none"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-safe Python data (non-finite floats as strings)."""
        return json_safe(
            {
                "kind": self.kind,
                "loss": self.loss,
                "verdict": self.verdict,
                "growth_per_layer": self.growth_per_layer,
                "global_norm": self.global_norm,
                "clip_threshold": self.clip_threshold,
                "thresholds": dataclasses.asdict(self.thresholds),
                "series": {
                    "kind": self.series,
                    "names": list(self.series_names),
                    "values": self.series_values,
                },
                "regions": [dataclasses.asdict(r) for r in self.regions],
                "leaves": {
                    n: {"grad_norm": g, "param_norm": p}
                    for n, g, p in zip(
                        self.leaf_names, self.leaf_grad_norms, self.leaf_param_norms, strict=True
                    )
                },
                "groups": [
                    {"name": n, "grad_norm": g, "weight_grad_norm": w, "param_norm": p}
                    for n, g, w, p in zip(
                        self.groups,
                        self.group_grad_norms,
                        self.group_weight_grad_norms,
                        self.group_param_norms,
                        strict=True,
                    )
                ],
                "activations": dict(
                    zip(self.activation_names, self.activation_grad_norms, strict=True)
                ),
                "microbatch_global_norms": self.microbatch_global_norms,
                "spectra": [dataclasses.asdict(s) for s in self.spectra],
                "step_probe": None
                if self.step_probe is None
                else dataclasses.asdict(self.step_probe),
                "suggestions": list(self.suggestions),
                "context": self.context,
            }
        )

    def plot(self, *, title: str | None = None):
        """The report as a figure (see :func:`plot_report`)."""
        return plot_report(self, title=title)

    def compare(self, other: Report) -> Comparison:
        """This report (before) against ``other`` (after a fix), block by block.

        Args:
          other: the report of the changed model (same blocks, or not).

        Returns:
          A :class:`Comparison`.
        """
        if not isinstance(other, Report):
            raise invalid("other", type(other).__name__, "a gradjax Report")
        after = dict(zip(other.series_names, other.series_values, strict=True))
        common = tuple(n for n in self.series_names if n in after)
        before = dict(zip(self.series_names, self.series_values, strict=True))
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.array([after[n] / before[n] for n in common], np.float64)
        return Comparison(
            verdicts=(self.verdict, other.verdict),
            growth=(self.growth_per_layer, other.growth_per_layer),
            loss=(self.loss, other.loss),
            global_norm=(self.global_norm, other.global_norm),
            series=(self.series, other.series),
            common_layers=common,
            ratios=ratios,
        )


def _structure_line(context: Mapping[str, Any]) -> str:
    blocks = context.get("blocks", 0)
    norms = context.get("norms_found") or ([context["norm"]] if context.get("norm") else [])
    residual = context.get("residual")
    res = "unknown" if residual is None else ("yes" if residual else "no")
    return (
        f"structure: {blocks} blocks, normalisation: {', '.join(norms) or 'none found'}, "
        f"residual: {res}"
    )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two reports side by side (:meth:`Report.compare`): each pair is (before, after).

    Attributes:
      verdicts: the overall verdicts.
      growth: backward growth per block.
      loss: the losses.
      global_norm: the global gradient norms.
      series: the series kinds (``"activations"`` or ``"parameters"``).
      common_layers: the series names present in both, input side first.
      ratios: after / before of the series value of each common layer.
    """

    verdicts: tuple[str, str]
    growth: tuple[float, float]
    loss: tuple[float, float]
    global_norm: tuple[float, float]
    series: tuple[str, str]
    common_layers: tuple[str, ...]
    ratios: np.ndarray

    def summary(self) -> str:
        """A short text: verdict, growth and norms before and after, and the largest changes."""
        lines = [
            f"verdict: {self.verdicts[0]} -> {self.verdicts[1]}",
            f"backward growth per block: {self.growth[0]:.3g} -> {self.growth[1]:.3g}",
            f"loss: {self.loss[0]:.4g} -> {self.loss[1]:.4g}",
            f"global grad norm: {self.global_norm[0]:.3g} -> {self.global_norm[1]:.3g}",
        ]
        if len(self.common_layers):
            lines.append(f"per-block ||dL/da|| after/before ({len(self.common_layers)} blocks):")
            for name, r in zip(self.common_layers, self.ratios, strict=True):
                lines.append(f"  {name:<24} x{r:.3g}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data."""
        return json_safe(dataclasses.asdict(self))


# ---------------------------------------------------------------------------- verdicts


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


def _overall(regs: Sequence[Region]) -> str:
    if not regs:
        return "healthy"
    if any(r.verdict == "non-finite" for r in regs):
        return "non-finite"
    worst = max(regs, key=lambda r: abs(math.log(r.ratio)) if r.ratio > 0 else math.inf)
    return worst.verdict


# ---------------------------------------------------------------------------- suggestions


def critical_sigma_w2(activation: str, sigma_b: float = 0.0) -> float | None:
    """The weight variance with chi_1 = 1 (edge of chaos) for ``activation`` at ``sigma_b``.

    Args:
      activation: an activation name.
      sigma_b: bias standard deviation.

    Returns:
      :func:`gradjax.theory.critical_sigma_w2` at ``sigma_b^2``, or ``None`` where chi_1 does
      not cross 1 in the theory module's search range (no critical init to suggest).
    """
    from gradjax.theory import critical_sigma_w2 as theory_critical

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
    from gradjax.activations import ACTIVATIONS

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
    activation: str | None = None,
    sigma_w: float | None = None,
    sigma_b: float = 0.0,
    norm: str | None = None,
    residual: bool | None = None,
    depth: int | None = None,
    early_spike: float | None = None,
    warmup_steps: int | None = None,
    step_probe: StepProbe | None = None,
) -> tuple[str, ...]:
    """Concrete changes for a verdict, tied to the standard fixes.

    One weight-scale target is given: the critical one of mean-field theory (chi_1 = 1) when
    the activation is known, otherwise the first-order rescale ``sigma_w / growth`` (only for
    nets without normalisation, where the weight scale sets the gradient growth).

    Args:
      verdict: the overall verdict.
      growth_per_layer: measured backward growth factor per block.
      clip_threshold: the observed-norm percentile (``nan`` if none).
      thresholds: the thresholds used.
      activation: the activation's table name, if known.
      sigma_w: the current weight scale (std multiplier of ``1/sqrt(fan_in)``), if known.
      sigma_b: the bias standard deviation.
      norm: ``"batch"``, ``"layer"``, ``"group"`` or ``None`` (none found).
      residual: whether the blocks are residual (``None``: unknown).
      depth: number of blocks.
      early_spike: max early global norm over the later median, from a training history.
      warmup_steps: a warm-up length to suggest (default: a tenth of the recorded steps).
      step_probe: the first-step probe, if one was run.

    Returns:
      Suggestions, most important first.
    """
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
    elif bad and norm is None and math.isfinite(rate) and rate > 0:
        out.append(
            f"the gradient is multiplied by {rate:.3g} per block on its way to the input; "
            f"multiply the weight init scale by about 1/{rate:.3g} = {1 / rate:.3g}"
        )
    if verdict == "vanishing" and activation == "sigmoid":
        out.append(
            "switch sigmoid to tanh or a ReLU-family activation (sigmoid' <= 0.25 and its "
            "non-zero mean shifts every layer)"
        )
    if verdict == "vanishing":
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
    if verdict in ("exploding", "non-finite"):
        out.append(
            "the observed gradient norms are themselves the explosion, so no clipping "
            "threshold is read from them: fix the scale first, then clip at a high quantile "
            "of the norms of the fixed model (optax.clip_by_global_norm)"
        )
        out.append("add a learning-rate warm-up (e.g. optax.warmup_cosine_decay_schedule)")
        if residual:
            out.append("scale the residual branches by 1/sqrt(depth) or use SkipInit")
        if norm == "batch":
            out.append(
                "deep BatchNorm nets explode at init (Yang et al. 2019): use fewer BN layers, "
                "LayerNorm, or residual blocks"
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
                f"(optional) a clipping safety net at the observed p{thresholds.clip_percentile:g}:"
                f" optax.clip_by_global_norm({clip})"
            )
    # Keep the first occurrence of each suggestion, in order.
    return tuple(dict.fromkeys(out))


# ---------------------------------------------------------------------------- diagnose


def _check_params_finite(params: Any) -> None:
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.core.Tracer):
            raise GradjaxInputError(
                "params is invalid here: diagnose runs on concrete arrays (call it outside jit)"
            )
        value = np.asarray(leaf)
        if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
            bad.append("/".join(module_parts(path)) or "leaf")
    if bad:
        raise invalid(
            "params",
            f"non-finite values in {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""),
            "finite parameters (NaN/inf in the parameters themselves, not the gradients)",
        )


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _leaf_norms(tree: Any, slices: list) -> np.ndarray:
    """Frobenius norms of every leaf (or stacked slice), in ``slices`` order, on the host.

    In float64: no overflow for huge float32 gradients (an exploding run stays measurable
    until its values are non-finite), and no reductions for XLA to compile.
    """
    flat = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]
    out = np.empty(len(slices))
    with np.errstate(over="ignore", invalid="ignore"):
        for j, s in enumerate(slices):
            value = flat[s.index] if s.layer is None else flat[s.index][s.layer]
            out[j] = math.sqrt(float(np.sum(np.square(value))))
    return out


def _combine(norms: np.ndarray, members: list[list[int]]) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(
            [math.sqrt(float(np.sum(np.square(norms[m], dtype=np.float64)))) for m in members]
        )


def _param_order(boundary: Boundary, slices: list, x: Any) -> list[int]:
    """Parameter slices in execution order.

    Flax models: the order in which their modules were first called (a stack's layers in
    turn); pure functions: the first equation of the traced forward pass that reads each
    leaf. Ties by natural order of the names.
    """
    if boundary.kind == "function":
        uses = first_use(lambda p: boundary.apply(p, x), boundary.params)
        return sorted(
            range(len(slices)),
            key=lambda i: (
                uses[slices[i].index],
                slices[i].layer or 0,
                natural_key(slices[i].name),
            ),
        )
    sites = {tuple(s.name.split("/")): i for i, s in enumerate(boundary.sites(x))}
    leaf_parts = [
        module_parts(p) for p, _ in jax.tree_util.tree_flatten_with_path(boundary.params)[0]
    ]

    def site_of(parts: tuple[str, ...], outermost: bool) -> int:
        found = [sites[parts[:k]] for k in range(1, len(parts)) if parts[:k] in sites]
        if not found:
            return -1
        return found[0] if outermost else found[-1]

    def key(i: int):
        s = slices[i]
        parts = leaf_parts[s.index]
        if s.layer is None:
            return (site_of(parts, False), 0, -1, natural_key(s.name))
        return (site_of(parts, True), s.layer, site_of(parts, False), natural_key(s.name))

    return sorted(range(len(slices)), key=key)


def _kernel_mask(boundary: Boundary, x: Any) -> Any:
    """Which parameter leaves are kernels (two axes or more per layer) inside a block."""
    block_sites = {tuple(b.site.split("/")) for b in boundary.blocks(x)}
    paths, treedef = jax.tree_util.tree_flatten_with_path(boundary.params)
    kernel = [False] * len(paths)
    for s in layer_slices(boundary.params):
        parts = module_parts(paths[s.index][0])
        if s.ndim >= 2 and any(parts[: len(b)] == b for b in block_sites):
            kernel[s.index] = True
    return jax.tree_util.tree_unflatten(treedef, kernel)


def _program(
    boundary: Boundary, loss: Callable[..., Any], x: Any, y: Any, probes: Any
) -> Callable[..., Any]:
    """The one jitted program of a diagnosis, cached by structure, shapes and loss.

    ``program(params, state, probes, x, y, weights)`` pulls ``weights[i] * dL/dout_i`` back
    through the model: with all weights 1 it is the full-batch gradient (and ``dL/da_l`` for
    every block); with the indicator of a slice of examples it is that slice's share of it.
    One compiled program serves the full batch and every slice.
    """
    key = (boundary.cache_key(x, y, probes), loss if _is_hashable(loss) else id(loss))
    if key in _PROGRAMS:
        return _PROGRAMS[key]

    def measure(p, state, e, x, y, weights):
        out, pullback = jax.vjp(lambda p, e: boundary.apply(p, x, e, state=state), p, e)
        value, cot = jax.value_and_grad(lambda o: loss(o, y))(out)
        cot = jax.tree.map(
            lambda c: c * weights.reshape((-1,) + (1,) * (c.ndim - 1)).astype(c.dtype), cot
        )
        gp, ge = pullback(cot)
        # Norms are taken on the host (float64): the program is the gradient and no more.
        return value, gp, ge

    program = jax.jit(measure)
    if len(_PROGRAMS) >= _MAX_PROGRAMS:
        _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[key] = program
    return program


def _output_shape(boundary: Boundary, x: Any, probes: Any) -> Any:
    """The model's output shapes (traced once per structure and shapes)."""
    key = boundary.cache_key(x, probes)
    if key not in _OUTPUTS:
        if len(_OUTPUTS) >= _MAX_PROGRAMS:
            _OUTPUTS.pop(next(iter(_OUTPUTS)))
        _OUTPUTS[key] = jax.eval_shape(
            lambda p, e: boundary.apply(p, x, e), boundary.params, probes
        )
    return _OUTPUTS[key]


def _slice_norms(
    program: Callable[..., Any], boundary: Boundary, probes: Any, x: Any, y: Any, k: int
) -> np.ndarray:
    """Global gradient norm of ``k`` slices of the batch (the observed distribution).

    Slice ``i``'s share of the full-batch gradient times ``n / size_i``: for a mean loss
    without batch coupling exactly the gradient of that slice alone; the shares add up to the
    full-batch gradient for any loss (BatchNorm included). Needs outputs with a batch axis 0.
    """
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    out_shape = _output_shape(boundary, x, probes)
    if not k or not all(
        np.ndim(o) >= 1 and np.shape(o)[0] == n for o in jax.tree_util.tree_leaves(out_shape)
    ):
        return np.zeros((0,))
    m = n // k
    chunk = np.minimum(np.arange(n) // m, k - 1)  # the last slice takes the remainder
    out = []
    for i in range(k):
        weights = (chunk == i).astype(np.float32)
        grads = jax.device_get(program(boundary.params, boundary.state, probes, x, y, weights)[1])
        norm = math.sqrt(
            sum(
                float(np.sum(np.square(np.asarray(v, np.float64))))
                for v in jax.tree_util.tree_leaves(grads)
            )
        )
        out.append(norm * n / float(np.sum(chunk == i)))
    return np.asarray(out, np.float64)


def _residual_test(
    program: Callable[..., Any], boundary: Boundary, probes: Any, x: Any, y: Any
) -> bool | None:
    """Whether the first block's output reaches the loss with every kernel inside the blocks
    set to zero: only a skip connection carries it then.

    Two runs of the diagnosis' own compiled program (no new compilation), with the zeroed
    kernels, the first block's probe at zero and at a fixed random value: the losses differ
    exactly when the output depends on that block's output.
    """
    key = boundary.cache_key(x, y, probes)
    if key in _RESIDUAL:
        return _RESIDUAL[key]
    blocks = boundary.blocks(x)
    if boundary.kind == "function" or len(blocks) < 2:
        return None
    first = blocks[0]
    mask = _kernel_mask(boundary, x)
    # NumPy on the host: no small programs for XLA to compile just to make inputs.
    zeroed = jax.tree.map(
        lambda v, z: np.zeros(np.shape(v), np.asarray(v).dtype) if z else v, boundary.params, mask
    )
    leaves, treedef = jax.tree_util.tree_flatten(probes[first.site])
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(np.shape(v)).astype(np.asarray(v).dtype) for v in leaves]
    if first.layer is not None:  # a stacked site: move only the first layer's output
        for v in noise:
            v[np.arange(v.shape[0]) != first.layer] = 0
    moved = {**probes, first.site: jax.tree_util.tree_unflatten(treedef, noise)}
    ones = np.ones((jax.tree_util.tree_leaves(x)[0].shape[0],), np.float32)
    still = float(program(zeroed, boundary.state, probes, x, y, ones)[0])
    shaken = float(program(zeroed, boundary.state, moved, x, y, ones)[0])
    result = still != shaken and math.isfinite(shaken)
    if len(_RESIDUAL) >= _MAX_PROGRAMS:
        _RESIDUAL.pop(next(iter(_RESIDUAL)))
    _RESIDUAL[key] = result
    return result


def _is_hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def diagnose(
    model: Any,
    params: Any,
    batch: tuple[Any, Any],
    loss_fn: LossLike,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    mutable: Sequence[str] | None = None,
    rngs: Any = None,
    perturbations: Any = None,
    layers: Sequence[Callable[[jax.Array], jax.Array]] | None = None,
    layer_names: Sequence[str] | None = None,
    microbatches: int = 8,
    norm_history: Any = None,
    thresholds: Thresholds | None = None,
    activation: Any = None,
    sigma_w: float | None = None,
    sigma_b: float = 0.0,
    norm: str | None = None,
    residual: bool | None = None,
    max_jacobian_size: int = 1 << 22,
    lr: float | None = None,
    optimizer: str = "adam",
    probe_halvings: int = 5,
) -> Report:
    """Diagnoses the gradient flow of a model on one batch.

    Args:
      model: an ``nnx.Module`` (``params`` is ``None``), a Linen module or its ``.apply``
        (``params`` are its variables), or a pure function ``model(params, x)``.
      params: the Linen variables, the function's parameters, or ``None`` for NNX.
      batch: ``(inputs, targets)``; inputs have the batch on axis 0.
      loss_fn: ``loss_fn(output, targets) -> scalar``, or ``"mse"``/``"xent"``.
      apply_kwargs: keyword arguments of every forward call (``{"train": True}``).
      mutable: Linen collections updated in the forward pass (``["batch_stats"]``).
      rngs: Linen RNGs of the forward pass (``{"dropout": key}``).
      perturbations: pure functions only: zero arrays added to the activations, passed as
        ``model(params, x, perturbations=...)``; each leaf is a block.
      layers: optional per-example layer maps ``a_{l-1} -> a_l`` applied in sequence from one
        input; each gets an exact Jacobian spectrum.
      layer_names: names for ``layers`` (default ``"1"``, ``"2"``, ...).
      microbatches: slices of the batch whose global norms form the observed distribution
        (one more run of the compiled gradient program per slice).
      norm_history: optional :class:`gradjax.NormHistory` (or array of global norms)
        from training; the clip threshold and warm-up advice then come from it.
      thresholds: verdict thresholds (default :class:`Thresholds`).
      activation: the activation (a name, or a function known by its name), for init advice.
      sigma_w: the current weight scale, for init advice.
      sigma_b: the bias standard deviation, for init advice.
      norm: ``"batch"``/``"layer"`` where the model cannot be inspected (a pure function);
        a Flax model's normalisation layers are found from its submodules.
      residual: whether the blocks are residual, where the model cannot be inspected; a Flax
        model's are tested.
      max_jacobian_size: layers whose Jacobian has more entries are not summarised.
      lr: the planned learning rate; when given, the loss after one first ``optimizer`` step
        at ``lr`` and at ``probe_halvings`` halvings of it is measured (:class:`StepProbe`).
      optimizer: ``"adam"`` or ``"sgd"``, for the first-step probe.
      probe_halvings: how many halved rates the probe tries.

    Returns:
      A :class:`Report`.

    Raises:
      GradjaxInputError: if the loss is not a scalar, the batch does not fit the model, or
        the parameters hold non-finite values.

    Example:
      >>> import jax, jax.numpy as jnp, gradjax as gj
      >>> from flax import linen as nn
      >>> model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(16), nn.tanh, nn.Dense(1)])
      >>> x = jnp.ones((8, 4)); y = jnp.zeros((8, 1))
      >>> variables = model.init(jax.random.key(0), x)
      >>> report = gj.diagnose(model, variables, (x, y), "mse")
      >>> report.verdict in ("healthy", "vanishing", "exploding")
      True
    """
    from gradjax.gradients import get_loss

    thresholds = Thresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, Thresholds):
        raise invalid("thresholds", thresholds, "a gradjax.Thresholds")
    check_int("microbatches", microbatches, minimum=1)
    if lr is not None:
        check_real("lr", lr, strictly_positive=True)
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    check_int("probe_halvings", probe_halvings, minimum=1, maximum=30)
    if norm is not None:
        check_choice("norm", norm, ("batch", "layer", "group"))
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise invalid("batch", type(batch).__name__, "a pair (inputs, targets)")
    x, y = batch
    loss = get_loss(loss_fn)
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or jnp.ndim(leaves[0]) == 0:
        raise invalid("batch inputs", getattr(x, "shape", x), "arrays with a batch axis 0")
    full = int(jnp.shape(leaves[0])[0])
    if params is not None:
        _check_params_finite(params)
    boundary = wrap(
        model,
        params,
        apply_kwargs=apply_kwargs,
        mutable=mutable,
        rngs=rngs,
        perturbations=perturbations,
    )
    if boundary.kind == "nnx":
        _check_params_finite(boundary.params)

    # Shapes first, so a wrong batch or loss is reported before anything runs.
    try:
        probes = boundary.zero_probes(x)
        out_shape = _output_shape(boundary, x, probes)
    except GradjaxInputError:
        raise
    except Exception as err:  # the model's own shape error, whatever its type
        raise invalid(
            "batch inputs shape",
            jax.tree.map(jnp.shape, x),
            f"inputs the model accepts (it failed with: {_first_line(err)})",
        ) from None
    try:
        loss_shape = jax.eval_shape(loss, out_shape, y)
    except Exception as err:
        raise invalid(
            "batch targets shape",
            jax.tree.map(jnp.shape, y),
            f"targets the loss accepts for outputs {jax.tree.map(jnp.shape, out_shape)} "
            f"(it failed with: {_first_line(err)})",
        ) from None
    if not hasattr(loss_shape, "shape") or loss_shape.shape != ():
        raise invalid(
            "loss_fn output shape",
            getattr(loss_shape, "shape", type(loss_shape).__name__),
            "a scalar () (reduce over the batch, e.g. with jnp.mean)",
        )

    # Micro-batches: K slices of m >= 2 examples (BatchNorm needs two), each its own batch.
    k = min(microbatches, full // 2)
    k = k if k >= 2 else 0
    program = _program(boundary, loss, x, y, probes)
    ones = np.ones((full,), np.float32)
    value, gp, ge = jax.device_get(program(boundary.params, boundary.state, probes, x, y, ones))
    block_values = boundary.block_norms(ge, x) if probes else np.zeros((0,))
    g_micro = _slice_norms(program, boundary, probes, x, y, k)
    passes = _residual_test(program, boundary, probes, x, y)

    slices = layer_slices(boundary.params)
    grad_norms = _leaf_norms(gp, slices)
    param_norms = _leaf_norms(boundary.params, slices)
    p_order = _param_order(boundary, slices, x)
    leaf_names = tuple(slices[i].name for i in p_order)
    group_names = list(dict.fromkeys(slices[i].group for i in p_order))
    members = [[i for i in p_order if slices[i].group == g] for g in group_names]
    matrix_members = [[i for i in m if slices[i].ndim >= 2] for m in members]
    group_grad = _combine(grad_norms, members)
    group_param = _combine(param_norms, members)
    group_weight = np.array(
        [_combine(grad_norms, [mm])[0] if mm else math.nan for mm in matrix_members]
    )

    block_names = tuple(b.name for b in boundary.blocks(x))
    block_values = np.asarray(block_values, np.float64)
    if len(block_names) >= 2:
        series, s_names, s_values = "activations", block_names, block_values
        regs = regions(s_names, s_values, thresholds)
        overall = _overall(regs)
    else:
        keep = [j for j, mm in enumerate(matrix_members) if mm]
        series = "parameters"
        s_names = tuple(group_names[j] for j in keep)
        s_values = group_weight[keep]
        regs, overall = (), "inconclusive"
    if not np.all(np.isfinite(grad_norms)):
        overall = "non-finite"
    rate = growth_rate(s_values) if series == "activations" else math.nan

    micro = np.asarray(g_micro, np.float64)
    observed, early_spike, warmup_steps = micro, None, None
    if norm_history is not None:
        observed, early_spike, warmup_steps = _history_stats(norm_history)
    finite = observed[np.isfinite(observed)]
    clip = math.nan
    if finite.size and overall not in ("exploding", "non-finite"):
        clip = float(np.percentile(finite, thresholds.clip_percentile))

    kinds = boundary.norm_kinds(x) if boundary.kind != "function" else ()
    found_norm = kinds[0] if kinds else norm
    found_residual = (
        bool(passes) if boundary.kind != "function" and len(block_names) >= 2 else residual
    )
    spectra = _spectra(layers, layer_names, x, max_jacobian_size)
    step_probe = None
    if lr is not None:

        def objective(p, e, xb, yb):
            return loss(boundary.apply(p, xb, e), yb)

        step_probe = _step_probe(
            objective, boundary.params, probes, x, y, gp, lr, optimizer, probe_halvings, thresholds
        )
    act = activation_name(activation)
    context = {
        "activation": act,
        "sigma_w": sigma_w,
        "sigma_b": sigma_b,
        "norm": found_norm,
        "norms_found": list(kinds),
        "residual": found_residual,
        "blocks": len(block_names),
    }
    suggestions = suggest(
        overall,
        growth_per_layer=rate,
        clip_threshold=clip,
        thresholds=thresholds,
        activation=act,
        sigma_w=sigma_w,
        sigma_b=sigma_b,
        norm=found_norm,
        residual=found_residual,
        depth=len(block_names) or None,
        early_spike=early_spike,
        warmup_steps=warmup_steps,
        step_probe=step_probe,
    )
    return Report(
        kind=boundary.kind,
        loss=float(value),
        leaf_names=leaf_names,
        leaf_grad_norms=grad_norms[p_order],
        leaf_param_norms=param_norms[p_order],
        groups=tuple(group_names),
        group_grad_norms=group_grad,
        group_weight_grad_norms=group_weight,
        group_param_norms=group_param,
        activation_names=block_names,
        activation_grad_norms=block_values,
        series=series,
        series_names=tuple(s_names),
        series_values=np.asarray(s_values, np.float64),
        growth_per_layer=rate,
        regions=regs,
        verdict=overall,
        global_norm=float(_combine(grad_norms, [list(range(len(grad_norms)))])[0]),
        microbatch_global_norms=micro,
        clip_threshold=clip,
        spectra=spectra,
        step_probe=step_probe,
        suggestions=suggestions,
        thresholds=thresholds,
        context=context,
    )


def _step_probe(
    objective: Callable[..., jax.Array],
    params: Any,
    pert: Any,
    x: Any,
    y: Any,
    grads: Any,
    lr: float,
    optimizer: str,
    halvings: int,
    thresholds: Thresholds,
) -> StepProbe:
    lrs = np.asarray([lr * 0.5**k for k in range(halvings + 1)])
    direction = jax.tree.map(jnp.sign if optimizer == "adam" else (lambda g: g), grads)

    @jax.jit
    def losses(rates):
        def after(rate):
            stepped = jax.tree.map(
                lambda p, d: p - jnp.asarray(rate, jnp.asarray(p).dtype) * d, params, direction
            )
            return objective(stepped, pert, x, y)

        return jax.lax.map(after, rates)

    loss0 = float(objective(params, pert, x, y))
    values = np.asarray(losses(jnp.asarray(lrs, jnp.float32)), np.float64)
    gains = np.where(np.isfinite(values), loss0 - values, -np.inf)
    best = float(np.max(gains))
    ok = gains >= thresholds.step_gain * best if best > 0 else np.zeros_like(gains, bool)
    safe = float(lrs[np.argmax(ok)]) if ok.any() else math.nan
    return StepProbe(
        optimizer=optimizer,
        lrs=tuple(float(v) for v in lrs),
        losses=tuple(float(v) for v in values),
        loss0=loss0,
        unstable=bool(not ok[0]),
        safe_lr=safe,
    )


def _history_stats(history: Any) -> tuple[np.ndarray, float | None, int | None]:
    if hasattr(history, "global_norms"):
        norms = np.asarray(history.global_norms(), np.float64)
    else:
        norms = np.asarray(history, np.float64).reshape(-1)
    if norms.size == 0:
        raise invalid("norm_history", "empty", "a history with at least one step")
    n_early = max(1, norms.size // 10)
    early, late = norms[:n_early], norms[n_early:]
    spike = None
    late = late[np.isfinite(late)]
    if late.size and np.median(late) > 0:
        with np.errstate(invalid="ignore"):
            peak = np.nanmax(np.where(np.isfinite(early), early, np.inf))
        spike = float(peak / np.median(late))
    return norms, spike, n_early


def _spectra(
    layers: Sequence[Callable[[jax.Array], jax.Array]] | None,
    names: Sequence[str] | None,
    x: Any,
    max_size: int,
) -> tuple[LayerSpectrum, ...]:
    if layers is None:
        return ()
    from gradjax.jacobians import jacobian
    from gradjax.spectra import spectrum_summary

    layers = list(layers)
    names = [str(i + 1) for i in range(len(layers))] if names is None else list(names)
    if len(names) != len(layers):
        raise invalid("layer_names", len(names), f"{len(layers)} names, one per layer")
    a = jnp.asarray(jax.tree_util.tree_leaves(x)[0][0])
    out = []
    for name, f in zip(names, layers, strict=True):
        if not callable(f):
            raise invalid("layers", type(f).__name__, "callables a_{l-1} -> a_l")
        out_shape = jax.eval_shape(f, a)
        if out_shape.size * a.size <= max_size:
            jac = jacobian(lambda v, f=f, s=a.shape: f(v.reshape(s)).reshape(-1), a.reshape(-1))
            s = jax.device_get(jax.jit(spectrum_summary)(jac))
            out.append(
                LayerSpectrum(
                    layer=name,
                    mean_sq=float(s.mean_sq),
                    sigma_max=float(s.sigma_max),
                    sigma_min=float(s.sigma_min),
                    condition=float(s.condition),
                )
            )
        a = f(a)
    return tuple(out)


def diagnose_net(
    net: Any,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    loss: LossLike = "mse",
    jacobians: bool = True,
    **kwargs: Any,
) -> Report:
    """:func:`diagnose` for a gradjax :class:`~gradjax.models.Net`, its config as context.

    Every block output is exposed (its ``dL/da_l`` is exactly
    :func:`gradjax.layer_gradient_norms`'s ``activations``), every block is a layer for the
    Jacobian spectra (per example; skipped with BatchNorm, which couples the batch), and
    the activation, sigma_w, sigma_b, norm and residual come from ``net.cfg``.

    Args:
      net: the network.
      params: its parameters.
      x: inputs ``(batch, input_dim)``.
      y: targets for ``loss``.
      loss: a loss name or callable.
      jacobians: whether to summarise per-layer Jacobians.
      **kwargs: passed to :func:`diagnose`.

    Returns:
      A :class:`Report` whose series is ``||dL/da_l||`` for blocks ``1..depth``.
    """
    from gradjax.models import Net

    if not isinstance(net, Net):
        raise invalid("net", type(net).__name__, "a gradjax Net (gradjax.build(cfg))")
    net.check_input(x)
    cfg = net.cfg
    lead = jnp.shape(x)[:-1]
    names = [f"block{i + 1}" for i in range(cfg.depth)]
    zeros = {name: jnp.zeros((*lead, cfg.width), net.dtype) for name in names}

    def apply(p, xb, *, perturbations):
        stacked = jnp.stack([perturbations[name] for name in names])
        return net.forward(p, xb, perturbations=stacked).output

    layer_fns = None
    if jacobians and cfg.norm != "batch":
        layer_fns = [
            (lambda a, i=i: net.block(net.layer_params(params, i), a, residual=i > 0)[2])
            for i in range(cfg.depth)
        ]
    context = {
        "activation": cfg.activation,
        "sigma_w": float(cfg.sigma_w) * (math.sqrt(2.0) if cfg.init == "he" else 1.0),
        "sigma_b": float(cfg.sigma_b),
        "norm": cfg.norm,
        "residual": cfg.residual is not None,
    }
    context.update({k: kwargs.pop(k) for k in list(context) if k in kwargs})
    return diagnose(
        apply,
        params,
        (x, y),
        loss,
        perturbations=zeros,
        layers=layer_fns,
        layer_names=names if layer_fns else None,
        **context,
        **kwargs,
    )


# ---------------------------------------------------------------------------- plot


_VERDICT_COLORS = {
    "healthy": "#009E73",
    "vanishing": "#0072B2",
    "exploding": "#D55E00",
    "non-finite": "#000000",
    "inconclusive": "#999999",
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
    from gradjax.plotting import styled

    return styled(_plot_report)(report, title=title)


def _plot_report(report: Report, *, title: str | None):
    from gradjax.plotting import PALETTE, new_figure

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
        title=f"gradient per layer (x{report.growth_per_layer:.3g}/layer back)",
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

    ax = axes[2]
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
        ax.set(
            yscale="log",
            xlabel="layer $l$",
            ylabel=r"singular values$^2$ of $J_l$",
            title="layer Jacobian spectra",
        )
        ax.legend()
    else:
        norms = report.microbatch_global_norms
        norms = norms[np.isfinite(norms)]
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
    fig.suptitle(title or f"gradient flow: {report.verdict} ({report.kind} model)", fontsize=9)
    return fig
