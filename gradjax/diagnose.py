"""Diagnose the gradient flow of any model: Flax Linen, Flax NNX, a pure JAX function.

:func:`diagnose` needs only a forward function, its parameters, one batch and a loss. It
measures, in one jitted pass,

* the gradient norm of every parameter leaf and of every parameter group (a group is the
  module path: ``"Dense_0"``, ``"blocks/3/attn"``; gradjax's stacked ``"hidden"`` leaves are
  split into one group per layer),
* ``||dL/da||`` for every intermediate activation the model exposes through Flax's
  ``perturb`` (Linen ``self.perturb(name, x)``, NNX ``self.perturb(name, x)``) or, for a pure
  function, through a ``perturbations`` argument,
* the global gradient norm of ``microbatches`` independent slices of the batch: an observed
  distribution from which a clipping threshold is read,

and, outside ``jit``, exact per-layer Jacobian spectra where the caller hands over the layers
as a sequence of functions.

Layers are put in execution order by tracing the forward pass once (the first equation of
the jaxpr that reads each parameter or perturbation), so the order does not depend on how a
framework happens to name or sort its modules.

Verdicts. The per-layer series (``||dL/da_l||`` when activations are exposed, otherwise the
weight-gradient norm of every group that holds a matrix or kernel) is split into at most three
contiguous regions (input, middle, output). For each region the geometric-mean gradient norm
is divided by the norm at the output-most layer, where the gradient enters the network:

* ``vanishing`` if that ratio is below ``Thresholds.vanishing`` (default 0.1: the region gets
  less than a tenth of the gradient the output layer gets),
* ``exploding`` if it is above ``Thresholds.exploding`` (default 10),
* ``healthy`` otherwise, and ``non-finite`` if any gradient is NaN or infinite.

The per-layer growth rate is ``exp(-slope)`` of a least-squares line through
``log ||g_l||`` against ``l``: the factor by which the gradient is multiplied at each layer on
its way back towards the input (mean-field theory predicts ``sqrt(chi_1)`` for the activation
gradients of a random MLP, Schoenholz et al. 2017). The overall verdict is that of the region
furthest from healthy.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.errors import GradjaxInputError, check_choice, check_int, check_real, invalid
from gradjax.results import pytree_dataclass

LossLike = str | Callable[[Any, Any], jax.Array]

# Path components that name a variable's payload rather than a module (NNX ``Variable.value``).
_PAYLOAD_KEYS = ("value", "raw_value")
VERDICTS = ("healthy", "vanishing", "exploding", "non-finite")


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


# ---------------------------------------------------------------------------- paths, groups


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _names(path: Sequence[Any]) -> tuple[str, ...]:
    names = [_key_name(k) for k in path]
    while names and names[-1] in _PAYLOAD_KEYS:
        names.pop()
    return tuple(names)


def natural_key(text: str) -> list[Any]:
    """Sort key under which ``"layer_2"`` comes before ``"layer_10"``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclasses.dataclass(frozen=True)
class _Leaf:
    """One differentiable leaf, or one layer slice of a stacked leaf."""

    index: int  # position among the flattened leaves
    name: str  # full path, "/"-joined, with the layer index inserted for stacked leaves
    group: str  # module path (the name without its last component)
    layer: int | None  # slice of a stacked leaf, or None
    is_matrix: bool  # ndim >= 2 (per slice): a weight or kernel, not a bias or norm scale


def _leaves(tree: Any, stacked: Sequence[str]) -> list[_Leaf]:
    out: list[_Leaf] = []
    for index, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        names = _names(path)
        ndim = jnp.ndim(leaf)
        hit = next((i for i, n in enumerate(names[:-1]) if n in stacked), None)
        if hit is not None and ndim >= 1:
            for layer in range(jnp.shape(leaf)[0]):
                full = (*names[: hit + 1], str(layer), *names[hit + 1 :])
                group = "/".join(full[:-1])
                out.append(_Leaf(index, "/".join(full), group, layer, ndim - 1 >= 2))
        else:
            group = "/".join(names[:-1]) if len(names) > 1 else "/".join(names)
            out.append(_Leaf(index, "/".join(names) or "leaf", group or "leaf", None, ndim >= 2))
    return out


def _leaf_norms(tree: Any, leaves: list[_Leaf]) -> np.ndarray:
    """Frobenius norms of every leaf (or stacked slice), in ``leaves`` order, ``(n,)``.

    Computed on the host in float64: no overflow for huge float32 gradients (exploding runs
    stay measurable until the values themselves are non-finite), exact for float64 ones, and
    no extra reductions for XLA to compile into the measuring program.
    """
    flat = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]
    out = np.empty(len(leaves))
    with np.errstate(over="ignore", invalid="ignore"):
        for j, leaf in enumerate(leaves):
            value = flat[leaf.index] if leaf.layer is None else flat[leaf.index][leaf.layer]
            out[j] = math.sqrt(float(np.sum(np.square(value))))
    return out


def _combine(norms: np.ndarray, members: list[list[int]]) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(
            [math.sqrt(float(np.sum(np.square(norms[m], dtype=np.float64)))) for m in members]
        )


# ---------------------------------------------------------------------------- model adapter


@dataclasses.dataclass
class _Adapter:
    """A model reduced to ``forward(params, perturbations, x)`` over differentiable params."""

    kind: str
    params: Any
    forward: Callable[[Any, Any, Any], Any]
    zero_perturbations: Callable[[Any], Any]


def _batch_size(x: Any) -> int | None:
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or jnp.ndim(leaves[0]) == 0:
        return None
    return int(jnp.shape(leaves[0])[0])


def _is_nnx_module(obj: Any) -> bool:
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax is a dependency
        return False
    return isinstance(obj, nnx.Module)


def _linen_bound(apply_fn: Any) -> bool:
    from flax import linen as nn

    return isinstance(getattr(apply_fn, "__self__", None), nn.Module)


def _adapter(apply_fn: Any, params: Any, perturbations: Any, full_batch: int | None) -> _Adapter:
    if _is_nnx_module(apply_fn):
        from flax import nnx

        if params is not None:
            raise invalid("params", type(params).__name__, "None when an nnx.Module is passed")
        graphdef, nnx_params, rest = nnx.split(apply_fn, nnx.Param, ...)

        def call(module, x):
            return module(x)

        def forward(p, e, x):
            module = nnx.merge(graphdef, p, rest)
            # Calling through ``capture`` is how NNX feeds perturbations (and it keeps
            # ``perturb``/``sow`` from warning about use outside a capture).
            if e is None:
                out, _ = nnx.capture(call, nnx.Perturbation)(module, x)
            else:
                out, _ = nnx.capture(call, nnx.Perturbation, init=e)(module, x)
            return out

        def zeros(x):
            shapes = jax.eval_shape(
                lambda p, x: nnx.capture(call, nnx.Perturbation)(nnx.merge(graphdef, p, rest), x)[
                    1
                ],
                nnx_params,
                x,
            )
            leaves = jax.tree_util.tree_leaves(shapes)
            if not leaves:
                return None
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        return _Adapter("nnx", nnx_params, forward, zeros)

    if not callable(apply_fn):
        raise invalid("apply_fn", type(apply_fn).__name__, "a callable or an nnx.Module")

    if isinstance(params, Mapping) and "params" in params:
        # Flax Linen variables: differentiate the "params" collection only; batch statistics
        # and other collections are held fixed; "perturbations" are the activation taps.
        others = {k: v for k, v in params.items() if k not in ("params", "perturbations")}
        bound = _linen_bound(apply_fn)
        stored = params.get("perturbations")

        def forward(p, e, x):
            variables = {**others, "params": p}
            if e is not None:
                variables["perturbations"] = e
            return apply_fn(variables, x)

        def zeros(x):
            if bound:
                shapes = jax.eval_shape(
                    lambda p, x: apply_fn({**others, "params": p}, x, mutable=["perturbations"])[1],
                    params["params"],
                    x,
                )
                shapes = shapes.get("perturbations")
                if not shapes:
                    return None
                return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            return _resize_template(stored, full_batch, _batch_size(x))

        return _Adapter("linen", params["params"], forward, zeros)

    if perturbations is None:
        return _Adapter("function", params, lambda p, e, x: apply_fn(p, x), lambda x: None)

    def forward(p, e, x):
        return apply_fn(p, x, perturbations=e)

    return _Adapter(
        "function",
        params,
        forward,
        lambda x: _resize_template(perturbations, full_batch, _batch_size(x)),
    )


def _resize_template(template: Any, full: int | None, size: int | None) -> Any:
    """Zero perturbations for a batch of ``size``; leaves with a batch axis 0 are resized."""
    if template is None or not jax.tree_util.tree_leaves(template):
        return None
    if size == full:
        return jax.tree.map(jnp.zeros_like, template)
    leaves = jax.tree_util.tree_leaves(template)
    if any(jnp.ndim(v) == 0 or jnp.shape(v)[0] != full for v in leaves):
        raise _NoResize
    return jax.tree.map(
        lambda v: jnp.zeros((size, *jnp.shape(v)[1:]), jnp.asarray(v).dtype), template
    )


class _NoResize(Exception):
    """The perturbations cannot be re-shaped to a micro-batch (no batch axis 0)."""


# ---------------------------------------------------------------------------- measurement


@pytree_dataclass
class GradientFlow:
    """The raw measurements of one :func:`diagnose` pass.

    Attributes:
      loss: the loss on the whole batch.
      grad_norms: ``||dL/dtheta||`` per parameter leaf (per layer slice for stacked leaves),
        in the order of :attr:`Report.leaf_names`.
      param_norms: ``||theta||`` for the same leaves.
      activation_grad_norms: ``||dL/da||`` per exposed activation, ``(A,)`` (``A`` may be 0).
      microbatch_global_norms: global gradient norm of each micro-batch, ``(K,)``.
    """

    loss: jax.Array
    grad_norms: jax.Array
    param_norms: jax.Array
    activation_grad_norms: jax.Array
    microbatch_global_norms: jax.Array


def _global_norm(tree: Any) -> jax.Array:
    from gradjax.numerics import safe_norm  # overflow-safe for huge (exploding) gradients

    leaves = [jnp.ravel(v) for v in jax.tree_util.tree_leaves(tree)]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dtype = jnp.result_type(*leaves)
    return safe_norm(jnp.concatenate([v.astype(dtype) for v in leaves]))


def _first_use(fn: Callable[..., Any], *trees: Any) -> list[list[float]]:
    """For each leaf of each tree, the index of the first jaxpr equation that reads it."""
    flats = [jax.tree_util.tree_flatten(t) for t in trees]

    def flat_fn(*leaf_lists):
        rebuilt = [
            jax.tree_util.tree_unflatten(td, list(ls))
            for (_, td), ls in zip(flats, leaf_lists, strict=True)
        ]
        return fn(*rebuilt)

    closed = jax.make_jaxpr(flat_fn)(*[leaves for leaves, _ in flats])
    invars = closed.jaxpr.invars
    first: dict[Any, int] = {}
    for i, eqn in enumerate(closed.jaxpr.eqns):
        for v in eqn.invars:
            if hasattr(v, "val"):  # a literal, not a variable
                continue
            first.setdefault(v, i)
    out, pos = [], 0
    for leaves, _ in flats:
        out.append([float(first.get(invars[pos + j], math.inf)) for j in range(len(leaves))])
        pos += len(leaves)
    return out


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
            f"verdict: {self.verdict.upper()}   backward growth per layer: "
            f"{self.growth_per_layer:.3g}   global grad norm: {self.global_norm:.3g}",
            f"thresholds: vanishing if region/output-layer gradient ratio < {t.vanishing:g}, "
            f"exploding if > {t.exploding:g}",
            "",
            f"{'region':<8} {'layers':>7} {'ratio':>10} {'growth/layer':>13}  verdict",
        ]
        for r in self.regions:
            lines.append(
                f"{r.name:<8} {len(r.layers):>7d} {r.ratio:>10.3g} {r.growth_per_layer:>13.3g}"
                f"  {r.verdict}"
            )
        lines += ["", f"per-layer series ({self.series}, input side first):"]
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
        return _json_safe(
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


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# ---------------------------------------------------------------------------- verdicts


def growth_rate(values: np.ndarray) -> float:
    """Backward growth factor per layer of a series ordered input side first.

    Args:
      values: positive norms ``g_1..g_L`` (input side first).

    Returns:
      ``exp(-b)`` for the least-squares fit ``log g_l = a + b l``: > 1 means the gradient
      grows on its way back to the input. ``nan`` for fewer than two finite positive values.
    """
    v = np.asarray(values, np.float64)
    keep = np.isfinite(v) & (v > 0)
    if keep.sum() < 2:
        return math.nan
    layers = np.arange(len(v), dtype=np.float64)[keep]
    slope = np.polyfit(layers, np.log(v[keep]), 1)[0]
    return float(np.exp(-slope))


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
    residual: str | None = None,
    depth: int | None = None,
    series: str = "activations",
    early_spike: float | None = None,
    warmup_steps: int | None = None,
    step_probe: StepProbe | None = None,
) -> tuple[str, ...]:
    """Concrete changes for a verdict, tied to the standard fixes.

    Args:
      verdict: the overall verdict.
      growth_per_layer: measured backward growth factor per layer.
      clip_threshold: the observed-norm percentile (``nan`` if none).
      thresholds: the thresholds used.
      activation: the model's activation name, if known.
      sigma_w: the current weight scale (std multiplier of ``1/sqrt(fan_in)``), if known.
      sigma_b: the bias standard deviation.
      norm: ``"batch"``, ``"layer"`` or ``None``.
      residual: the residual kind or ``None``.
      depth: number of layers, if known.
      series: which series the verdict reads.
      early_spike: max early global norm over the later median, from a training history.
      warmup_steps: a warm-up length to suggest (default: a tenth of the recorded steps).
      step_probe: the first-step probe, if one was run.

    Returns:
      Suggestions, most important first.
    """
    out: list[str] = []
    clip = f"{clip_threshold:.3g}" if math.isfinite(clip_threshold) else None
    rate = growth_per_layer
    if verdict in ("vanishing", "exploding") and math.isfinite(rate) and rate > 0:
        if sigma_w is not None and series == "activations" and norm is None:
            target = sigma_w / rate
            out.append(
                f"rescale the weights: the gradient is multiplied by {rate:.3g} per layer; "
                f"sigma_w = {sigma_w:.3g} -> about {target:.3g} (sigma_w^2 = {target**2:.3g}) "
                "brings the per-layer factor to 1 to first order"
            )
        else:
            out.append(
                f"the gradient is multiplied by {rate:.3g} per layer on its way to the input; "
                f"multiply the weight init scale by about 1/{rate:.3g} = {1 / rate:.3g}"
            )
    if activation is not None and verdict in ("vanishing", "exploding"):
        if activation in _RELU_FAMILY:
            out.append(
                f"use He initialisation for {activation}: "
                f"sigma_w^2 = {_RELU_FAMILY[activation]:.3g} (chi_1 = 1)"
            )
        else:
            crit = critical_sigma_w2(activation, sigma_b)
            if crit is not None:
                out.append(
                    f"use the critical init for {activation} at sigma_b = {sigma_b:g}: "
                    f"sigma_w^2 = {crit:.3g} (chi_1 = 1, edge of chaos)"
                    + (
                        ", with orthogonal weights for dynamical isometry"
                        if activation in ("tanh", "erf")
                        else ""
                    )
                )
        if verdict == "vanishing" and activation == "sigmoid":
            out.append(
                "switch sigmoid to tanh or a ReLU-family activation (sigmoid' <= 0.25 and its "
                "non-zero mean shifts every layer)"
            )
    if verdict == "vanishing":
        if norm is None:
            out.append("add normalisation (LayerNorm, or BatchNorm for large batches)")
        if residual is None:
            scale = f" scaled by 1/sqrt(depth) = {1 / math.sqrt(depth):.3g}" if depth else ""
            out.append(f"add residual connections{scale} (or SkipInit/ReZero, gain 0 at init)")
        if norm is not None or activation is None:
            out.append(
                "if the large gradients sit at the output end of a post-LN residual stack, "
                "move the norm before each branch (pre-LN) or add a learning-rate warm-up"
            )
    if verdict in ("exploding", "non-finite"):
        if clip is not None:
            out.append(
                f"clip gradients at the {thresholds.clip_percentile:g}th percentile of the "
                f"observed global norms: optax.clip_by_global_norm({clip})"
            )
        out.append("add a learning-rate warm-up (e.g. optax.warmup_cosine_decay_schedule)")
        if residual == "plain":
            out.append("scale the residual branches by 1/sqrt(depth) or use SkipInit")
        if norm == "batch":
            out.append(
                "deep BatchNorm nets explode at init (Yang et al. 2019): use fewer BN layers, "
                "LayerNorm, or residual blocks"
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
            bad.append("/".join(_names(path)) or "leaf")
    if bad:
        raise invalid(
            "params",
            f"non-finite values in {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""),
            "finite parameters (NaN/inf in the parameters themselves, not the gradients)",
        )


def diagnose(
    apply_fn: Any,
    params: Any,
    batch: tuple[Any, Any],
    loss_fn: LossLike,
    *,
    perturbations: Any = None,
    layers: Sequence[Callable[[jax.Array], jax.Array]] | None = None,
    layer_names: Sequence[str] | None = None,
    stacked: Sequence[str] = ("hidden",),
    microbatches: int = 8,
    norm_history: Any = None,
    thresholds: Thresholds | None = None,
    activation: str | None = None,
    sigma_w: float | None = None,
    sigma_b: float = 0.0,
    norm: str | None = None,
    residual: str | None = None,
    max_jacobian_size: int = 1 << 22,
    lr: float | None = None,
    optimizer: str = "adam",
    probe_halvings: int = 5,
) -> Report:
    """Diagnoses the gradient flow of a model on one batch.

    Args:
      apply_fn: ``apply_fn(params, x) -> output``: a Linen ``model.apply`` (``params`` are its
        variables), any pure JAX function, or an ``nnx.Module`` itself (then ``params`` is
        ``None``). A model that needs more arguments is wrapped, e.g. BatchNorm in train
        mode: ``lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[0]``
        (Linen variables are still recognised by their ``"params"`` collection).
      params: the parameters (Linen variables, a pytree, or ``None`` for NNX).
      batch: ``(inputs, targets)``; inputs have the batch on axis 0.
      loss_fn: ``loss_fn(output, targets) -> scalar``, or ``"mse"``/``"xent"``.
      perturbations: pure functions only: zero arrays added to the activations, passed as
        ``apply_fn(params, x, perturbations=...)``; ``dL/dperturbations`` is ``dL/da``.
        Linen and NNX models expose activations through ``self.perturb`` instead.
      layers: optional per-example layer maps ``a_{l-1} -> a_l`` applied in sequence from one
        input; each gets an exact Jacobian spectrum.
      layer_names: names for ``layers`` (default ``"1"``, ``"2"``, ...).
      stacked: path names whose leaves stack layers on axis 0 (gradjax's ``"hidden"``,
        a Linen ``nn.scan`` module's name); each slice is its own group.
      microbatches: slices of the batch whose global norms form the observed distribution.
      norm_history: optional :class:`gradjax.monitor.NormHistory` (or array of global norms)
        from training; the clip threshold and warm-up advice then come from it.
      thresholds: verdict thresholds (default :class:`Thresholds`).
      activation: the activation name, for init advice.
      sigma_w: the current weight scale, for init advice.
      sigma_b: the bias standard deviation, for init advice.
      norm: ``"batch"``/``"layer"``/``None``, for advice.
      residual: ``"plain"``/``"scaled"``/``"skipinit"``/``None``, for advice.
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
      >>> model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(1)])
      >>> x = jnp.ones((8, 4)); y = jnp.zeros((8, 1))
      >>> variables = model.init(jax.random.key(0), x)
      >>> report = gj.diagnose(model.apply, variables, (x, y), "mse")
      >>> report.verdict in ("healthy", "vanishing", "exploding")
      True
    """
    from gradjax.gradients import get_loss

    thresholds = Thresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, Thresholds):
        raise invalid("thresholds", thresholds, "a gradjax.diagnose.Thresholds")
    check_int("microbatches", microbatches, minimum=1)
    if lr is not None:
        check_real("lr", lr, strictly_positive=True)
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    check_int("probe_halvings", probe_halvings, minimum=1, maximum=30)
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise invalid("batch", type(batch).__name__, "a pair (inputs, targets)")
    x, y = batch
    loss = get_loss(loss_fn)
    full = _batch_size(x)
    if full is None:
        raise invalid("batch inputs", getattr(x, "shape", x), "arrays with a batch axis 0")
    if params is not None:
        _check_params_finite(params)
    adapter = _adapter(apply_fn, params, perturbations, full)
    if adapter.kind == "nnx":
        _check_params_finite(adapter.params)

    # Shapes first, so a wrong batch or loss is reported before anything runs.
    try:
        pert0 = adapter.zero_perturbations(x)
        out_shape = jax.eval_shape(lambda p, e: adapter.forward(p, e, x), adapter.params, pert0)
    except GradjaxInputError:
        raise
    except Exception as err:  # the model's own shape error, whatever its type
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        shapes = jax.tree.map(jnp.shape, x)
        raise invalid(
            "batch inputs shape", shapes, f"inputs the model accepts (it failed with: {first})"
        ) from None
    try:
        loss_shape = jax.eval_shape(loss, out_shape, y)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise invalid(
            "batch targets shape",
            jax.tree.map(jnp.shape, y),
            f"targets the loss accepts for outputs {jax.tree.map(jnp.shape, out_shape)} "
            f"(it failed with: {first})",
        ) from None
    if not hasattr(loss_shape, "shape") or loss_shape.shape != ():
        raise invalid(
            "loss_fn output shape",
            getattr(loss_shape, "shape", type(loss_shape).__name__),
            "a scalar () (reduce over the batch, e.g. with jnp.mean)",
        )

    p_leaves = _leaves(adapter.params, stacked)
    e_leaves = _leaves(pert0, stacked) if pert0 is not None else []
    uses = _first_use(lambda p, e: adapter.forward(p, e, x), adapter.params, pert0)

    def objective(p, e, xb, yb):
        return loss(adapter.forward(p, e, xb), yb)

    # Micro-batches: K slices of m >= 2 examples (BatchNorm needs two), each its own batch.
    k = min(microbatches, full // 2)
    micro_pert = None
    if k >= 2:
        m = full // k
        try:
            micro_pert = adapter.zero_perturbations(jax.tree.map(lambda a: a[:m], x))
        except _NoResize:
            k = 0
    else:
        k = 0

    @jax.jit
    def measure(p, e):
        value, (gp, ge) = jax.value_and_grad(objective, argnums=(0, 1))(p, e, x, y)
        if k:
            m = full // k
            split = lambda a: a[: k * m].reshape(k, m, *a.shape[1:])
            xs, ys = jax.tree.map(split, x), jax.tree.map(split, y)
            g_micro = jax.vmap(
                lambda xb, yb: _global_norm(jax.grad(objective)(p, micro_pert, xb, yb))
            )(xs, ys)
        else:
            g_micro = jnp.zeros((0,), jnp.float32)
        return value, gp, ge, g_micro

    value, gp, ge, g_micro = jax.device_get(measure(adapter.params, pert0))
    flow = GradientFlow(
        loss=value,
        grad_norms=_leaf_norms(gp, p_leaves),
        param_norms=_leaf_norms(adapter.params, p_leaves),
        activation_grad_norms=_leaf_norms(ge, e_leaves) if e_leaves else np.zeros((0,)),
        microbatch_global_norms=np.asarray(g_micro, np.float64),
    )
    grad_norms, param_norms = flow.grad_norms, flow.param_norms

    # Execution order: first use in the jaxpr; ties (stacked slices, one scan) by name.
    def order(leaves: list[_Leaf], first: list[float]) -> list[int]:
        return sorted(
            range(len(leaves)),
            key=lambda i: (
                first[leaves[i].index],
                leaves[i].layer or 0,
                natural_key(leaves[i].name),
            ),
        )

    p_order = order(p_leaves, uses[0])
    leaf_names = tuple(p_leaves[i].name for i in p_order)
    group_names: list[str] = []
    for i in p_order:
        if p_leaves[i].group not in group_names:
            group_names.append(p_leaves[i].group)
    members = [[i for i in p_order if p_leaves[i].group == g] for g in group_names]
    matrix_members = [[i for i in m if p_leaves[i].is_matrix] for m in members]
    group_grad = _combine(grad_norms, members)
    group_param = _combine(param_norms, members)
    group_weight = np.array(
        [_combine(grad_norms, [mm])[0] if mm else math.nan for mm in matrix_members]
    )

    act_names: tuple[str, ...] = ()
    act_values = np.zeros((0,))
    if e_leaves:
        e_order = order(e_leaves, uses[1])
        act_names = tuple(e_leaves[i].name for i in e_order)
        act_values = np.asarray(flow.activation_grad_norms, np.float64)[e_order]

    if len(act_names):
        series, s_names, s_values = "activations", act_names, act_values
    else:
        keep = [j for j, mm in enumerate(matrix_members) if mm]
        series = "parameters"
        s_names = tuple(group_names[j] for j in keep)
        s_values = group_weight[keep]

    regs = regions(s_names, s_values, thresholds)
    overall = _overall(regs)
    if not np.all(np.isfinite(grad_norms)):
        overall = "non-finite"
    rate = growth_rate(s_values)

    micro = np.asarray(flow.microbatch_global_norms, np.float64)
    observed, early_spike, warmup_steps = micro, None, None
    if norm_history is not None:
        observed, early_spike, warmup_steps = _history_stats(norm_history)
    finite = observed[np.isfinite(observed)]
    clip = float(np.percentile(finite, thresholds.clip_percentile)) if finite.size else math.nan

    spectra = _spectra(layers, layer_names, x, max_jacobian_size)
    step_probe = None
    if lr is not None:
        step_probe = _step_probe(
            objective, adapter.params, pert0, x, y, gp, lr, optimizer, probe_halvings, thresholds
        )
    depth = len(s_names) or None
    context = {
        "activation": activation,
        "sigma_w": sigma_w,
        "sigma_b": sigma_b,
        "norm": norm,
        "residual": residual,
    }
    suggestions = suggest(
        overall,
        growth_per_layer=rate,
        clip_threshold=clip,
        thresholds=thresholds,
        activation=activation,
        sigma_w=sigma_w,
        sigma_b=sigma_b,
        norm=norm,
        residual=residual,
        depth=depth,
        series=series,
        early_spike=early_spike,
        warmup_steps=warmup_steps,
        step_probe=step_probe,
    )
    return Report(
        kind=adapter.kind,
        loss=float(flow.loss),
        leaf_names=leaf_names,
        leaf_grad_norms=grad_norms[p_order],
        leaf_param_norms=param_norms[p_order],
        groups=tuple(group_names),
        group_grad_norms=group_grad,
        group_weight_grad_norms=group_weight,
        group_param_norms=group_param,
        activation_names=act_names,
        activation_grad_norms=act_values,
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
        "activation": cfg.activation if isinstance(cfg.activation, str) else None,
        "sigma_w": float(cfg.sigma_w) * (math.sqrt(2.0) if cfg.init == "he" else 1.0),
        "sigma_b": float(cfg.sigma_b),
        "norm": cfg.norm,
        "residual": cfg.residual,
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
