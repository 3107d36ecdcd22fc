"""The gradient-flow report: thresholds, verdicts, regions and their text and JSON forms.

The verdicts themselves are read by :mod:`gradjax.diagnosis.verdicts` (thresholds on the
per-layer series, regions, the time axis); :func:`gradjax.diagnose` fills a :class:`Report`;
:meth:`Report.compare` sets two side by side (:class:`Comparison`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gradjax.utils.errors import check_real, invalid
from gradjax.utils.files import json_safe

if TYPE_CHECKING:
    from gradjax.diagnosis.verdicts import TimeAxis

VERDICTS = ("healthy", "vanishing", "exploding", "non-finite", "inconclusive", "no gradient")

__all__ = [
    "VERDICTS",
    "Comparison",
    "LayerSpectrum",
    "Region",
    "Report",
    "ScaleProbe",
    "StepProbe",
    "Thresholds",
]


# ---------------------------------------------------------------------------- thresholds


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """The stated thresholds behind every verdict.

    Attributes:
      vanishing: a region whose geometric-mean gradient norm is below ``vanishing`` times the
        output-most layer's is vanishing (default 0.1, one decade).
      exploding: above ``exploding`` times the output-most layer's is exploding (default 10).
      clip_multiple: without a training history, the suggested ``clip_by_global_norm``
        threshold is this multiple of the full-batch global gradient norm (default 1.5: the
        norm ``optax.clip_by_global_norm`` clips, with headroom for batch-to-batch spread).
      clip_percentile: with a training history, the suggested threshold is this percentile
        of its global norms before the first explosion (default 90).
      warmup_spike: in a recorded training history, a warm-up is suggested when the largest
        global norm of the first tenth of the steps exceeds ``warmup_spike`` times the median
        of the rest (default 10).
      step_gain: the first optimiser step at the planned learning rate is unstable when its
        loss decrease is below ``step_gain`` times the best decrease among the halved rates
        (default 0.5).
    """

    vanishing: float = 0.1
    exploding: float = 10.0
    clip_multiple: float = 1.5
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
        check_real("thresholds.clip_multiple", self.clip_multiple, strictly_positive=True)
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
    """Singular-value summary of one layer's Jacobian ``da_l/da_{l-1}``.

    Attributes:
      layer: the block (or layer) whose output the map produces.
      mean_sq: mean squared singular value.
      sigma_max: largest singular value.
      sigma_min: smallest singular value (``nan`` where only estimated).
      condition: ``sigma_max / sigma_min`` (``nan`` where only estimated).
      source: the block whose output the map reads (``""`` for ``layers=`` maps).
      examples: how many examples the values are the mean over (1 when the map couples the
        batch, e.g. BatchNorm in train mode: then one Jacobian over the whole batch).
      method: ``"exact"`` (the Jacobian formed and decomposed) or ``"matrix-free"``
        (Lanczos and Hutchinson, :mod:`gradjax.measure.block_spectra`).
    """

    layer: str
    mean_sq: float
    sigma_max: float
    sigma_min: float
    condition: float
    source: str = ""
    examples: int = 1
    method: str = "exact"


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
      sharpness: the largest Hessian eigenvalue at the parameters (Lanczos): of the loss
        for SGD, of the loss preconditioned by Adam's first-step ``P = |g| + eps``
        (``P^-1 H``) for Adam.
      stability_limit: where ``lr * sharpness`` stops being stable: 2 for gradient descent,
        ``(2 + 2 beta1) / (1 - beta1) = 38`` for Adam (Cohen et al. 2022).
    """

    optimizer: str
    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    loss0: float
    unstable: bool
    safe_lr: float
    sharpness: float = math.nan
    stability_limit: float = 2.0


@dataclasses.dataclass(frozen=True)
class ScaleProbe:
    """The model's backward growth per block with every kernel multiplied by each scale.

    Attributes:
      scales: the kernel multipliers (1: the model as given).
      growth: the growth per block at each.
      critical: the multiplier where growth crosses 1, or ``None``.
      reason: why there is none (the range the growth stays in), else ``""``.
      within: without a crossing, the probed multiplier nearest 1x whose growth keeps the
        stack's output-to-input ratio (``growth^(blocks - 1)``) inside the verdict's
        thresholds, where the growth moves one way with the scale (a residual stack's
        growth approaches 1 from above but never crosses it); else ``None``.
    """

    scales: tuple[float, ...]
    growth: tuple[float, ...]
    critical: float | None
    reason: str
    within: float | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    """What :func:`gradjax.diagnose` found: measurements, verdicts and suggestions.

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
      microbatch_global_norms: global norms of slices of the batch, when asked for
        (``microbatches``); informative only: no suggestion is read from them.
      clip_threshold: the suggested ``clip_by_global_norm`` threshold (see ``clip_basis``), or
        ``nan`` when no measurement supports one (an exploding model without a history).
      clip_basis: the measurement the threshold comes from, in words.
      spectra: per-block Jacobian summaries (``spectra=True``: the maps between consecutive
        block outputs, named by the block each produces; or the ``layers`` given); empty
        otherwise.
      io_spectrum: the map from the first block's output to the last one's
        (``spectra=True``), else ``None``.
      step_probe: the first-step probe (``None`` unless ``lr`` was given).
      suggestions: concrete changes, most important first.
      thresholds: the :class:`Thresholds` used.
      context: what the caller said about the model (activation, sigma_w, ...).
      time_axis: the recurrence over time furthest from healthy (:class:`TimeAxis`), or
        ``None`` for a model without one.
      time_axes: every recurrence over time, in execution order (a bidirectional layer is
        two).
      axis_verdicts: the verdict of each axis judged: ``"depth"`` (the blocks) and/or
        ``"time"`` (the worst recurrence); ``verdict`` is the worse of them.
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
    time_axis: TimeAxis | None = None
    time_axes: tuple[TimeAxis, ...] = ()
    axis_verdicts: Mapping[str, str] = dataclasses.field(default_factory=dict)
    clip_basis: str = ""
    scale_probe: ScaleProbe | None = None
    io_spectrum: LayerSpectrum | None = None

    # -------------------------------------------------------------- views

    def to_dataframe(self) -> Any:
        """A ``pandas.DataFrame`` with a row per block: gradient norm, region, verdict and
        spectrum (:func:`gradjax.utils.labelled.report_dataframe`)."""
        from gradjax.utils.labelled import report_dataframe

        return report_dataframe(self)

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
        lines += _time_lines(self)
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
            lines += ["", _spectra_heading(self.spectra)]
            width = max([len(s.layer) for s in self.spectra] + [8])
            lines.append(f"  {'layer':<{width}} {'mean s^2':>10} {'s_max':>10} {'s_min':>10}")
            for s in (*self.spectra, *((self.io_spectrum,) if self.io_spectrum else ())):
                name = s.layer if s is not self.io_spectrum else f"{s.source}->{s.layer}"
                lines.append(
                    f"  {name:<{width}} {s.mean_sq:>10.3g} {s.sigma_max:>10.3g}"
                    f" {s.sigma_min:>10.3g}"
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
            if math.isfinite(sp.sharpness):
                kind = "preconditioned sharpness" if sp.optimizer == "adam" else "sharpness"
                lines.append(
                    f"  {kind} at init {sp.sharpness:.4g}: lr x {kind} = "
                    f"{sp.lrs[0] * sp.sharpness:.3g} ({sp.optimizer} is stable below "
                    f"{sp.stability_limit:g})"
                )
        if self.microbatch_global_norms.size:
            lines += [
                "",
                f"global norms of {self.microbatch_global_norms.size} slices of the batch: "
                f"median {np.median(self.microbatch_global_norms):.3g}",
            ]
        if self.scale_probe is not None:
            sp = self.scale_probe
            pairs = ", ".join(
                f"{a:.3g}x: {g:.3g}" for a, g in zip(sp.scales, sp.growth, strict=True)
            )
            lines += ["", f"growth per block against kernel scale: {pairs}"]
        if self.clip_basis:
            clip = f"{self.clip_threshold:.3g}" if math.isfinite(self.clip_threshold) else "none"
            lines += ["", f"clip threshold: {clip} ({self.clip_basis})"]
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
                "clip_basis": self.clip_basis,
                "scale_probe": None
                if self.scale_probe is None
                else dataclasses.asdict(self.scale_probe),
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
                "io_spectrum": None
                if self.io_spectrum is None
                else dataclasses.asdict(self.io_spectrum),
                "step_probe": None
                if self.step_probe is None
                else dataclasses.asdict(self.step_probe),
                "suggestions": list(self.suggestions),
                "context": self.context,
                "axis_verdicts": dict(self.axis_verdicts),
                "time_axes": [_time_dict(a) for a in self.time_axes],
            }
        )

    def plot(self, *, title: str | None = None):
        """The report as a figure (see :func:`gradjax.diagnosis.report_plot.plot_report`)."""
        from gradjax.diagnosis.report_plot import plot_report

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


def _time_lines(report: Report) -> list[str]:
    """The summary's lines on the axes judged and every recurrence over time."""
    if not report.time_axes:
        return []
    axes = ", ".join(f"{k}: {v}" for k, v in report.axis_verdicts.items())
    lines = ["", f"verdict by axis: {axes}", "recurrences over time (backward, last step first):"]
    for a in report.time_axes:
        first, last = a.norms[0], a.norms[-1]
        under = "none" if a.underflow_step is None else f"t={a.underflow_step}"
        lines.append(
            f"  {a.name}: {len(a.steps)} steps, growth/step {a.growth_per_step:.4g}, "
            f"||dL/dh|| first/last step {first:.3g}/{last:.3g}, underflow at {under}: "
            f"{a.verdict}"
        )
        if a.step_sigma_max is not None:
            below = bool(np.all(a.step_sigma_max < 1.0))
            lines.append(
                f"    step Jacobian dh_t+1/dh_t: sigma_max median {np.median(a.step_sigma_max):.3g}"
                f" (max {np.max(a.step_sigma_max):.3g}), sqrt(mean sigma^2) median "
                f"{np.sqrt(np.median(a.step_mean_sq)):.3g}"
                + (
                    "; below 1 at every step, so the gradient must vanish (Pascanu et al.)"
                    if below
                    else ""
                )
            )
    if report.series == "parameters":
        lines.append("  (no repeated stack of blocks: the depth axis is not judged)")
    return lines


def _time_dict(a: TimeAxis) -> dict[str, Any]:
    return {
        "name": a.name,
        "steps": a.steps,
        "norms": a.norms,
        "state_norms": a.state_norms,
        "growth_per_step": a.growth_per_step,
        "underflow_step": a.underflow_step,
        "regions": [dataclasses.asdict(r) for r in a.regions],
        "verdict": a.verdict,
        "step_sigma_max": a.step_sigma_max,
        "step_mean_sq": a.step_mean_sq,
    }


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


def _spectra_heading(spectra: Sequence[LayerSpectrum]) -> str:
    first = spectra[0]
    if not first.source:
        return "layer Jacobians (first example):"
    over = (
        "the whole batch (its examples mix)"
        if first.examples == 1
        else (f"mean over {first.examples} examples")
    )
    return f"block-to-block Jacobians da_l/da_(l-1) ({first.method}, {over}):"
