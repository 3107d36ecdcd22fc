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

Verdicts come only from gradient flow, the series ``||dL/da_l||``, judged region by region
against stated thresholds (:mod:`gradjax.report`); the suggestions come from
:mod:`gradjax.advice`, the measurements from :mod:`gradjax.flow_measurement` and the figure
from :mod:`gradjax.report_plot`.

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

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# ``X as X``: re-exported, so that every name ``from gradjax.diagnose import ...`` reached
# before the report, advice and measurements had modules of their own still resolves (the
# measuring programs' caches are inspected and cleared by benchmarks and tests).
from gradjax.advice import activation_name, critical_sigma_w2, suggest
from gradjax.boundary import wrap
from gradjax.errors import GradjaxInputError, check_choice, check_int, check_real, invalid
from gradjax.fitting import growth_rate
from gradjax.flow_measurement import _OUTPUTS as _OUTPUTS
from gradjax.flow_measurement import _PROGRAMS as _PROGRAMS
from gradjax.flow_measurement import _RESIDUAL as _RESIDUAL
from gradjax.flow_measurement import (
    check_params_finite,
    combine_norms,
    gradient_program,
    leaf_norms,
    output_shape,
    param_order,
    residual_test,
    slice_norms,
)
from gradjax.report import VERDICTS as VERDICTS
from gradjax.report import (
    Comparison,
    LayerSpectrum,
    Report,
    StepProbe,
    Thresholds,
    classify,
    overall_verdict,
    regions,
)
from gradjax.report import Region as Region
from gradjax.report_plot import plot_report
from gradjax.tree_paths import layer_slices, natural_key

LossLike = str | Callable[[Any, Any], jax.Array]

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


# ---------------------------------------------------------------------------- diagnose


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


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
        check_params_finite(params)
    boundary = wrap(
        model,
        params,
        apply_kwargs=apply_kwargs,
        mutable=mutable,
        rngs=rngs,
        perturbations=perturbations,
    )
    if boundary.kind == "nnx":
        check_params_finite(boundary.params)

    # Shapes first, so a wrong batch or loss is reported before anything runs.
    try:
        probes = boundary.zero_probes(x)
        out_shape = output_shape(boundary, x, probes)
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
    program = gradient_program(boundary, loss, x, y, probes)
    ones = np.ones((full,), np.float32)
    value, gp, ge = jax.device_get(program(boundary.params, boundary.state, probes, x, y, ones))
    block_values = boundary.block_norms(ge, x) if probes else np.zeros((0,))
    g_micro = slice_norms(program, boundary, probes, x, y, k)
    passes = residual_test(program, boundary, probes, x, y)

    slices = layer_slices(boundary.params)
    grad_norms = leaf_norms(gp, slices)
    param_norms = leaf_norms(boundary.params, slices)
    p_order = param_order(boundary, slices, x)
    leaf_names = tuple(slices[i].name for i in p_order)
    group_names = list(dict.fromkeys(slices[i].group for i in p_order))
    members = [[i for i in p_order if slices[i].group == g] for g in group_names]
    matrix_members = [[i for i in m if slices[i].ndim >= 2] for m in members]
    group_grad = combine_norms(grad_norms, members)
    group_param = combine_norms(param_norms, members)
    group_weight = np.array(
        [combine_norms(grad_norms, [mm])[0] if mm else math.nan for mm in matrix_members]
    )

    block_names = tuple(b.name for b in boundary.blocks(x))
    block_values = np.asarray(block_values, np.float64)
    if len(block_names) >= 2:
        series, s_names, s_values = "activations", block_names, block_values
        regs = regions(s_names, s_values, thresholds)
        overall = overall_verdict(regs)
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
        global_norm=float(combine_norms(grad_norms, [list(range(len(grad_norms)))])[0]),
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
