"""Diagnose the gradient flow of any model: Flax Linen, Flax NNX, a pure JAX function.

:func:`diagnose` takes a model as its user wrote it (through :mod:`gradjax.boundary`), one
batch and a loss, and measures in one compiled program, cached by the model's structure and
the shapes so that a second call reuses it:

* ``||dL/da_l||`` for the output ``a_l`` of every block (the repeated submodules: Transformer
  blocks, residual blocks, the layers of an ``nn.scan`` stack), captured without any change
  to the model's code,
* the gradient norm of every parameter leaf and module group (one per layer for a stack),
* when asked for, the global gradient norm of ``microbatches`` slices of the batch (each
  slice's share of the full-batch gradient, times ``n / size``), through the same compiled
  program (informative: the clip threshold comes from the full-batch norm or a history),
* whether the blocks are residual: with every kernel inside the blocks set to zero, does the
  first block's output still reach the loss? (two more runs of the same program)

Verdicts come only from gradient flow, the series ``||dL/da_l||``, judged region by region
against stated thresholds (:mod:`gradjax.diagnosis.report`); the suggestions come from
:mod:`gradjax.diagnosis.advice`, the measurements from :mod:`gradjax.diagnosis.measurement` and the
figure
from :mod:`gradjax.diagnosis.report_plot`.

Where no block outputs exist (a pure function without ``perturbations``, a model with fewer
than two blocks) the report shows the parameter-gradient norms and says ``inconclusive``:
a weight gradient ``delta_l a_{l-1}^T`` mixes forward and backward signals and is no
gradient-flow measurement.

The per-layer growth rate is ``exp(-slope)`` of a least-squares line through
``log ||g_l||`` against ``l`` (:func:`gradjax.utils.fitting.growth_rate`): the factor by which the
gradient is multiplied per block on its way back (mean-field theory predicts
``sqrt(chi_1)`` for a random MLP, Schoenholz et al. 2017).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.boundary import wrap
from gradjax.diagnosis.advice import ModelHints, activation_name, suggest
from gradjax.diagnosis.measurement import Measurement, check_params_finite
from gradjax.diagnosis.report import LayerSpectrum, Report, ScaleProbe, StepProbe, Thresholds
from gradjax.diagnosis.verdicts import judge
from gradjax.measure.gradients import get_loss
from gradjax.measure.hessian import hessian_top_eigenvalue
from gradjax.measure.recurrent import step_spectra
from gradjax.utils.errors import check_choice, check_int, check_real, invalid
from gradjax.utils.fitting import crossing, no_crossing_reason

LossLike = str | Callable[[Any, Any], jax.Array]

__all__ = ["diagnose", "diagnose_net"]


# ---------------------------------------------------------------------------- diagnose


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
    hints: ModelHints | Mapping[str, Any] | None = None,
    microbatches: int = 0,
    norm_history: Any = None,
    thresholds: Thresholds | None = None,
    layers: Sequence[Callable[[jax.Array], jax.Array]] | None = None,
    layer_names: Sequence[str] | None = None,
    max_jacobian_size: int = 1 << 22,
    lr: float | None = None,
    optimizer: str = "adam",
    probe_halvings: int = 5,
    step_jacobians: bool = False,
    spectra: bool = False,
) -> Report:
    """Diagnoses the gradient flow of a model on one batch: measure, judge, advise, report.

    Args:
      model: an ``nnx.Module`` (``params`` is ``None``), a Linen module or its ``.apply``
        (``params`` are its variables), or a pure function ``model(params, x)``; any kind
        :func:`gradjax.boundary.wrap` takes.
      params: the Linen variables, the function's parameters, or ``None`` for NNX.
      batch: ``(inputs, targets)``; inputs have the batch on axis 0.
      loss_fn: ``loss_fn(output, targets) -> scalar``, or ``"mse"``/``"xent"``.
      apply_kwargs: keyword arguments of every forward call (``{"train": True}``).
      mutable: Linen collections updated in the forward pass (``["batch_stats"]``).
      rngs: Linen RNGs of the forward pass (``{"dropout": key}``).
      perturbations: pure functions only: zero arrays added to the activations, passed as
        ``model(params, x, perturbations=...)``; each leaf is a block.
      hints: what the model cannot tell about itself (:class:`~gradjax.diagnosis.advice.
        ModelHints`, or a dict of its fields): activation and weight scale for the init
        advice; normalisation and residual blocks of a pure function.
      microbatches: slices of the batch whose global norms are recorded (one more run of the
        compiled gradient program per slice; default none). Informative only: a slice of a
        batch that a norm couples is a different function, so no advice is read from them.
      norm_history: optional :class:`gradjax.NormHistory` (or array of global norms)
        from training; the clip threshold and warm-up advice then come from it.
      thresholds: verdict thresholds (default :class:`Thresholds`).
      layers: optional per-example layer maps ``a_{l-1} -> a_l`` applied in sequence from one
        input; each gets an exact Jacobian spectrum.
      layer_names: names for ``layers`` (default ``"1"``, ``"2"``, ...).
      max_jacobian_size: layers whose Jacobian has more entries are not summarised.
      lr: the planned learning rate; when given, the loss after one first ``optimizer`` step
        at ``lr`` and at ``probe_halvings`` halvings of it is measured (:class:`StepProbe`).
      optimizer: ``"adam"`` or ``"sgd"``, for the first-step probe.
      probe_halvings: how many halved rates the probe tries.
      step_jacobians: for a model with recurrences over time, also measure the top and mean
        squared singular values of every step Jacobian ``dh_{t+1}/dh_t``
        (:func:`gradjax.measure.recurrent.step_spectra`; one more compiled program).
      spectra: measure the Jacobian of every block-to-block map ``a_{l-1} -> a_l`` of a
        Linen or NNX model, and of the map from the first block to the last
        (:func:`gradjax.measure.block_spectra.block_spectra`: matrix-free, exact where one
        example's Jacobian has at most 65536 entries); not with ``layers``.

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
      >>> report.activation_names
      ('layers_0', 'layers_2', 'layers_4')
    """
    thresholds = _checked_options(thresholds, microbatches, lr, optimizer, probe_halvings)
    hints = _checked_hints(hints)
    x, y = _checked_batch(batch)
    if params is not None:
        check_params_finite(params)
    boundary = wrap(
        model, params, apply_kwargs=apply_kwargs, mutable=mutable, rngs=rngs,
        perturbations=perturbations,
    )  # fmt: skip
    if boundary.kind == "nnx":
        check_params_finite(boundary.params)
    # Measure (shapes are checked first, so a wrong batch or loss is refused before any run).
    measured = Measurement(boundary, get_loss(loss_fn), x, y)
    flow = measured.flow(microbatches)
    _check_single_example_batchnorm(flow, x)
    if spectra and layers is not None:
        raise invalid("spectra", True, "False when layers are given (one source of spectra)")
    io_spectrum = None
    if spectra:
        layer_spectra, io_spectrum = _block_spectra(boundary, x)
    else:
        layer_spectra = _spectra(layers, layer_names, x, max_jacobian_size)
    step_probe = None
    if lr is not None:
        step_probe = _step_probe(measured, lr, optimizer, probe_halvings, thresholds)
    # Judge, then advise from the measurements.
    judged = judge(flow, thresholds)
    if step_jacobians and judged.time_axes:
        judged = _with_step_spectra(judged, step_spectra(boundary, x))
    history, early_spike, warmup_steps = None, None, None
    if norm_history is not None:
        history, early_spike, warmup_steps = _history_stats(norm_history)
    clip, clip_basis = _clip_threshold(flow.global_norm, judged.verdict, history, thresholds)
    scale_probe = None
    if (
        judged.axis_verdicts.get("depth") in ("vanishing", "exploding")
        and (hints.activation is None or hints.sigma_w is None)
        and judged.series == "activations"
    ):
        scale_probe = _scale_probe(measured, len(flow.block_names), thresholds)
    blocks = len(flow.block_names)
    context = {
        "activation": activation_name(hints.activation),
        "sigma_w": hints.sigma_w,
        "sigma_b": hints.sigma_b,
        "norm": flow.norms_found[0] if flow.norms_found else hints.norm,
        "norms_found": list(flow.norms_found),
        "residual": flow.residual if flow.residual is not None else hints.residual,
        "blocks": blocks,
    }
    suggestions = suggest(
        judged.verdict,
        growth_per_layer=judged.growth_per_layer,
        clip_threshold=clip,
        clip_basis=clip_basis,
        thresholds=thresholds,
        **{k: context[k] for k in ("activation", "sigma_w", "sigma_b", "norm", "residual")},
        depth=blocks or None,
        early_spike=early_spike,
        warmup_steps=warmup_steps,
        step_probe=step_probe,
        time_axis=judged.time_axis
        if judged.axis_verdicts.get("time") == judged.verdict != judged.axis_verdicts.get("depth")
        else None,
        scale_probe=scale_probe,
    )
    clipping = (clip, clip_basis)
    probes = (step_probe, scale_probe)
    report = _report(
        flow, judged, clipping, layer_spectra, probes, suggestions, thresholds, context
    )
    return dataclasses.replace(report, io_spectrum=io_spectrum) if io_spectrum else report


def _checked_options(
    thresholds: Any, microbatches: Any, lr: Any, optimizer: Any, probe_halvings: Any
) -> Thresholds:
    thresholds = Thresholds() if thresholds is None else thresholds
    if not isinstance(thresholds, Thresholds):
        raise invalid("thresholds", thresholds, "a gradjax.Thresholds")
    check_int("microbatches", microbatches, minimum=0)
    if lr is not None:
        check_real("lr", lr, strictly_positive=True)
    check_choice("optimizer", optimizer, ("adam", "sgd"))
    check_int("probe_halvings", probe_halvings, minimum=1, maximum=30)
    return thresholds


def _checked_hints(hints: Any) -> ModelHints:
    if hints is None or isinstance(hints, ModelHints):
        return hints or ModelHints()
    if isinstance(hints, Mapping):
        fields = {f.name for f in dataclasses.fields(ModelHints)}
        unknown = sorted(set(hints) - fields)
        if unknown:
            raise invalid("hints", unknown[0], "fields of ModelHints: " + ", ".join(sorted(fields)))
        return ModelHints(**hints)
    raise invalid("hints", type(hints).__name__, "a gradjax.diagnosis.advice.ModelHints or a dict")


def _check_single_example_batchnorm(flow: Any, x: Any) -> None:
    """Refuses one example through a BatchNorm that normalises over the batch: each feature
    is then its own mean, the output a constant, and the gradient below exactly zero, which
    would read as vanishing. Seen in the measurement (a group with exactly zero gradient),
    so a BatchNorm in eval mode (running averages) passes."""
    size = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
    if size == 1 and "batch" in flow.norms_found and np.any(flow.group_grad_norms == 0):
        raise invalid(
            "batch inputs",
            "1 example",
            "at least 2 examples for a model whose BatchNorm normalises over the batch (with "
            "one, each feature is its own mean: the output is constant and no gradient "
            "reaches the layers below), or the model in eval mode",
        )


def _checked_batch(batch: Any) -> tuple[Any, Any]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise invalid("batch", type(batch).__name__, "a pair (inputs, targets)")
    x, y = batch
    leaves = jax.tree_util.tree_leaves(x)
    if not leaves or jnp.ndim(leaves[0]) == 0:
        raise invalid("batch inputs", getattr(x, "shape", x), "arrays with a batch axis 0")
    return x, y  # an empty batch is refused with the model (measure.fit_checks)


def _report(flow, judged, clipping, spectra, probes, suggestions, thresholds, context) -> Report:
    return Report(
        kind=flow.kind,
        loss=flow.loss,
        leaf_names=flow.leaf_names,
        leaf_grad_norms=flow.leaf_grad_norms,
        leaf_param_norms=flow.leaf_param_norms,
        groups=flow.groups,
        group_grad_norms=flow.group_grad_norms,
        group_weight_grad_norms=flow.group_weight_grad_norms,
        group_param_norms=flow.group_param_norms,
        activation_names=flow.block_names,
        activation_grad_norms=flow.block_grad_norms,
        series=judged.series,
        series_names=judged.names,
        series_values=judged.values,
        growth_per_layer=judged.growth_per_layer,
        regions=judged.regions,
        verdict=judged.verdict,
        global_norm=flow.global_norm,
        microbatch_global_norms=flow.microbatch_global_norms,
        clip_threshold=clipping[0],
        clip_basis=clipping[1],
        spectra=spectra,
        step_probe=probes[0],
        scale_probe=probes[1],
        suggestions=suggestions,
        thresholds=thresholds,
        context=context,
        time_axis=judged.time_axis,
        time_axes=judged.time_axes,
        axis_verdicts=judged.axis_verdicts,
    )


def _step_probe(
    measured: Measurement, lr: float, optimizer: str, halvings: int, thresholds: Thresholds
) -> StepProbe:
    """The loss after one first ``optimizer`` step at ``lr`` and at ``halvings`` halvings."""
    objective, params = measured.objective, measured.boundary.params
    pert, x, y, grads = measured.probes, measured.x, measured.y, measured.param_grads
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
    if optimizer == "sgd":  # gradient descent's stability limit: lr x sharpness < 2
        loss_at = lambda p: objective(p, pert, x, y)
        start, limit = params, 2.0
    else:
        # Adam is stable while lr x the sharpness of its preconditioned loss stays below
        # (2 + 2 beta1) / (1 - beta1) = 38 (Cohen et al. 2022). At its first step the
        # preconditioner is P = |g| + eps; the Hessian of L(theta + P^(-1/2) u) at u = 0 is
        # P^(-1/2) H P^(-1/2), whose eigenvalues are those of P^(-1) H.
        scale = jax.tree.map(lambda g: jax.lax.rsqrt(jnp.abs(g) + ADAM_EPS), grads)
        loss_at = lambda u: objective(
            jax.tree.map(lambda p, d, v: p + d * v, params, scale, u), pert, x, y
        )
        start, limit = jax.tree.map(jnp.zeros_like, params), ADAM_STABILITY_LIMIT
    top = hessian_top_eigenvalue(loss_at, start, jax.random.key(0), steps=20)
    return StepProbe(
        optimizer=optimizer,
        lrs=tuple(float(v) for v in lrs),
        losses=tuple(float(v) for v in values),
        loss0=loss0,
        unstable=bool(not ok[0]),
        safe_lr=safe,
        sharpness=float(top.value),
        stability_limit=limit,
    )


# Adam's defaults (optax.adam): eps, and the stability limit of lr x preconditioned sharpness
# for beta1 = 0.9, (2 + 2 beta1) / (1 - beta1).
ADAM_EPS = 1e-8
ADAM_STABILITY_LIMIT = 38.0

# Kernel multipliers of the scale probe: 1/4x to 4x in half-octave steps.
_PROBE_SCALES = 2.0 ** np.linspace(-2.0, 2.0, 9)


def _scale_probe(measured: Measurement, blocks: int, thresholds: Thresholds) -> ScaleProbe:
    """Growth per block against a kernel multiplier, where it crosses 1 and, where it never
    does, the scale nearest 1 whose growth keeps the whole stack within the thresholds."""
    growth = measured.kernel_scale_growth(_PROBE_SCALES)
    critical = crossing(_PROBE_SCALES, growth)
    # Going down: a model that explodes at 1x crosses from above, at a smaller scale.
    if critical is None:
        flipped = crossing(_PROBE_SCALES, 1.0 / np.where(growth > 0, growth, np.nan))
        critical = flipped
    within = None
    logs = np.log(np.where(growth > 0, growth, np.nan))
    steps = np.diff(logs)
    # Only a growth that moves one way with the scale (within 5% per step) says which way
    # to go; a normalised stack's growth wanders with the draw instead.
    monotonic = np.all(np.isfinite(steps)) and (np.all(steps > -0.05) or np.all(steps < 0.05))
    if critical is None and monotonic and blocks > 1:
        # The stack's output-to-input ratio is about growth^(blocks - 1): inside the
        # verdict's thresholds, the depth verdict reads healthy.
        bound = math.log(thresholds.exploding) / (blocks - 1)
        floor = math.log(thresholds.vanishing) / (blocks - 1)
        ok = [i for i, v in enumerate(logs) if floor <= v <= bound]
        if ok:
            within = float(_PROBE_SCALES[min(ok, key=lambda i: abs(math.log(_PROBE_SCALES[i])))])
    reason = ""
    if critical is None:
        reason = no_crossing_reason(_PROBE_SCALES, growth)
        if not monotonic and "does not depend" not in reason:
            reason += "; it does not change one way with the kernel scale (normalised layers)"
    return ScaleProbe(
        scales=tuple(float(v) for v in _PROBE_SCALES),
        growth=tuple(float(v) for v in growth),
        critical=critical,
        reason=reason,
        within=within,
    )


def _with_step_spectra(judged: Any, spectra: list[dict]) -> Any:
    """The judgement with each recurrence's step-Jacobian spectra attached (same order)."""
    axes = tuple(
        dataclasses.replace(a, step_sigma_max=s["sigma_max"], step_mean_sq=s["mean_sq"])
        for a, s in zip(judged.time_axes, spectra, strict=True)
    )
    # The worst recurrence, found by identity (its arrays make == ambiguous).
    worst = next(
        (b for a, b in zip(judged.time_axes, axes, strict=True) if a is judged.time_axis), None
    )
    return dataclasses.replace(judged, time_axes=axes, time_axis=worst)


def _clip_threshold(
    global_norm: float, verdict: str, history: np.ndarray | None, thresholds: Thresholds
) -> tuple[float, str]:
    """The ``clip_by_global_norm`` threshold and the measurement it comes from.

    From a training history: the ``clip_percentile``-th percentile of its global norms before
    the first explosion (a non-finite norm, or one above ``exploding`` times the median of
    the steps before it). Without one: ``clip_multiple`` times the full-batch global norm,
    unless that norm is itself an explosion.
    """
    if history is not None:
        end = _first_explosion(history, thresholds.exploding)
        before = history[:end]
        if before.size:
            where = f"the explosion at step {end}" if end < history.size else "the last step"
            value = float(np.percentile(before, thresholds.clip_percentile))
            return value, (
                f"p{thresholds.clip_percentile:g} of the global norms of the "
                f"{before.size} recorded steps up to {where}"
            )
        return math.nan, "the recorded history explodes from its first step: no threshold"
    if verdict in ("exploding", "non-finite") or not math.isfinite(global_norm):
        return math.nan, "the global norm of an exploding model is the explosion: no threshold"
    if global_norm == 0:
        return math.nan, "the gradient is exactly zero: nothing to clip"
    value = thresholds.clip_multiple * global_norm
    return value, (
        f"{thresholds.clip_multiple:g} x the full-batch global gradient norm {global_norm:.3g}, "
        "the quantity optax.clip_by_global_norm clips"
    )


def _first_explosion(norms: np.ndarray, factor: float) -> int:
    """Index of the first non-finite norm or one above ``factor`` x the median before it."""
    for k, value in enumerate(norms):
        if not math.isfinite(value) or (k and value > factor * float(np.median(norms[:k]))):
            return k
    return int(norms.size)


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


# Block maps whose per-example Jacobian has at most this many entries are also formed and
# decomposed (every singular value); larger ones are measured matrix-free only.
EXACT_BLOCK_JACOBIAN_ENTRIES = 1 << 16


def _block_spectra(boundary: Any, x: Any) -> tuple[tuple[LayerSpectrum, ...], LayerSpectrum]:
    """The block-to-block spectra as report entries, and the first-to-last block's."""
    from gradjax.measure.block_spectra import block_spectra

    found = block_spectra(boundary, x, exact_max_entries=EXACT_BLOCK_JACOBIAN_ENTRIES)
    examples = found.sigma_max_examples.shape[1]
    out = []
    for i, (name, source) in enumerate(zip(found.names, found.sources, strict=True)):
        exact = found.exact[i]
        if exact is None:
            values = (found.mean_sq[i], found.sigma_max[i], math.nan, math.nan, "matrix-free")
        else:
            smin = exact[:, -1]
            cond = np.where(smin > 0, exact[:, 0] / np.where(smin > 0, smin, 1.0), np.inf)
            values = (
                np.mean(exact**2, axis=1).mean(), exact[:, 0].mean(), smin.mean(), cond.mean(),
                "exact",
            )  # fmt: skip
        out.append(
            LayerSpectrum(
                layer=name,
                mean_sq=float(values[0]),
                sigma_max=float(values[1]),
                sigma_min=float(values[2]),
                condition=float(values[3]),
                source=source,
                examples=examples,
                method=values[4],
            )  # fmt: skip
        )
    io = LayerSpectrum(
        layer=found.names[-1], mean_sq=found.io_mean_sq, sigma_max=found.io_sigma_max,
        sigma_min=math.nan, condition=math.nan, source=found.sources[0], examples=examples,
        method="matrix-free",
    )  # fmt: skip
    return tuple(out), io


def _spectra(
    layers: Sequence[Callable[[jax.Array], jax.Array]] | None,
    names: Sequence[str] | None,
    x: Any,
    max_size: int,
) -> tuple[LayerSpectrum, ...]:
    if layers is None:
        return ()
    from gradjax.measure.jacobians import jacobian
    from gradjax.measure.spectra import spectrum_summary

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
    """:func:`diagnose` for a gradjax :class:`~gradjax.nets.models.Net`, its config as context.

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
    from gradjax.nets.models import Net

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
    hints = {
        "activation": cfg.activation,
        "sigma_w": float(cfg.sigma_w) * (math.sqrt(2.0) if cfg.init == "he" else 1.0),
        "sigma_b": float(cfg.sigma_b),
        "norm": cfg.norm,
        "residual": cfg.residual is not None,
    }
    hints.update(dict(kwargs.pop("hints", None) or {}))
    return diagnose(
        apply,
        params,
        (x, y),
        loss,
        perturbations=zeros,
        layers=layer_fns,
        layer_names=names if layer_fns else None,
        hints=hints,
        **kwargs,
    )
