"""Optax transformations for studying and fixing exploding gradients.

Two kinds of transformation live here:

* :func:`record_gradient_norms` passes updates through unchanged and keeps the per-group
  (per-layer, for gradjax nets) gradient norms of the latest step in its state, computed
  inside ``jit``. Put it first in a chain to see the raw gradients.
* The mitigation chain (clipping, warm-up + cosine decay, L2 and L1 weight penalties around
  SGD, momentum or Adam, and decoupled weight decay as in AdamW) is built further down.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradjax.nets.layout import STACKED_GROUPS
from gradjax.training.config import OPTIMIZERS, TrainConfig
from gradjax.utils.errors import check_choice, check_int, check_real, invalid
from gradjax.utils.numerics import safe_group_norms, safe_norm
from gradjax.utils.tree_paths import layer_slices, leaf_paths

GroupFn = Callable[[Any], dict[str, jax.Array]]


def _named_stacks(tree: Any) -> set[tuple[str, ...]]:
    """Prefixes ending at the first entry named as a stacked group of gradjax's layout."""
    out = set()
    for parts in leaf_paths(tree):
        hit = next((i for i, n in enumerate(parts) if n in STACKED_GROUPS), None)
        if hit is not None:
            out.add(tuple(parts[: hit + 1]))
    return out


def group_norms(tree: Any, *, stacked: Any = None) -> dict[str, jax.Array]:
    """Named gradient norms of a pytree: one per leaf, one per layer for stacked blocks.

    The names and layers are those of :func:`gradjax.utils.tree_paths.layer_slices`: every leaf is
    named by its path joined with ``"/"`` (``"input/W"``, ``"readout/b"``), and a leaf of a
    stacked subtree is split into per-layer norms named with the layer index inserted after
    the subtree's prefix: ``"hidden/0/W"``, ``"hidden/1/W"``, ... for gradjax's
    ``params["hidden"]`` (index 0 is network block 2, since block 1 is ``"input"``). Scalar
    leaves of a stack are kept whole. The norms are overflow-safe
    (:func:`gradjax.utils.numerics.safe_group_norms`: one reduction per leaf on a healthy step).

    Args:
      tree: a pytree of arrays (gradients, updates or parameters).
      stacked: prefixes (tuples of path entries) of the stacked subtrees; default: every
        path through an entry named as a stacked group of gradjax's layout
        (:data:`gradjax.nets.layout.STACKED_GROUPS`, i.e. ``"hidden"``), up to that entry.

    Returns:
      A dict from name to a scalar norm (Frobenius norm of the leaf or layer slice).

    Example:
      >>> import jax.numpy as jnp
      >>> norms = group_norms({"hidden": {"W": jnp.ones((2, 3, 3))}, "readout": {"b": jnp.ones(4)}})
      >>> sorted(norms)
      ['hidden/0/W', 'hidden/1/W', 'readout/b']
      >>> float(norms["readout/b"])
      2.0
    """
    slices = layer_slices(tree, stacked=_named_stacks(tree) if stacked is None else stacked)
    leaves = jax.tree_util.tree_leaves(tree)
    names: dict[int, list[str]] = {}
    for piece in slices:
        names.setdefault(piece.index, []).append(piece.name)
    groups = []
    for index, rows in names.items():
        leaf = jnp.asarray(leaves[index])
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            leaf = leaf.astype(jnp.float32)
        groups.append([leaf.reshape(len(rows), -1)])
    if not groups:
        return {}
    norms = safe_group_norms(groups)
    return {
        name: norm[i]
        for rows, norm in zip(names.values(), norms, strict=True)
        for i, name in enumerate(rows)
    }


class GradientNormState(NamedTuple):
    """State of :func:`record_gradient_norms`.

    Attributes:
      norms: ``dict[str, jax.Array]`` from group name to the norm of the latest step's
        incoming updates (gradients, when the transformation is first in its chain). Before
        the first update every norm is 0. Under ``vmap`` over seeds each norm gains the
        leading seed axis.
    """

    norms: dict[str, jax.Array]


def record_gradient_norms(group_fn: GroupFn | None = None) -> optax.GradientTransformation:
    """A transformation that records per-group gradient norms and changes nothing.

    The norms are computed inside the update function, so inside ``jit``/``scan``/``vmap``
    with the rest of the step, and stored in the state as a :class:`GradientNormState`
    ``(norms={name: scalar})``. The state has the same structure at every step (``init``
    evaluates ``group_fn`` on zeros), so it can be carried through ``lax.scan``.

    Args:
      group_fn: ``group_fn(grads) -> dict[str, jax.Array]`` mapping a gradient pytree to named
        norms; default :func:`group_norms` (per leaf, per layer for gradjax's stacked
        ``"hidden"`` blocks).

    Returns:
      An ``optax.GradientTransformation`` whose updates are its inputs, unchanged.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(record_gradient_norms(), optax.sgd(0.1))
      >>> params = {"hidden": {"W": jnp.ones((2, 3, 3))}}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"hidden": {"W": 2 * jnp.ones((2, 3, 3))}}, state)
      >>> float(state[0].norms["hidden/1/W"])
      6.0
    """
    fn = group_norms if group_fn is None else group_fn

    def init_fn(params: Any) -> GradientNormState:
        norms = fn(jax.tree.map(jnp.zeros_like, params))
        return GradientNormState(norms={k: jnp.zeros_like(v) for k, v in norms.items()})

    def update_fn(updates: Any, state: GradientNormState, params: Any = None):
        del state, params
        return updates, GradientNormState(norms=dict(fn(updates)))

    return optax.GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------- mitigation chain


def add_l1_penalty(l1: float | jax.Array, *, mask: Any = None) -> optax.GradientTransformation:
    """Adds the L1 penalty's (sub)gradient ``l1 * sign(w)`` to the updates.

    Optax has no L1 transformation; this is the L1 analogue of ``optax.add_decayed_weights``
    (which adds ``lambda * w``, the gradient of ``lambda/2 * ||w||^2``). ``sign(0) = 0``.

    Args:
      l1: the coefficient lambda (may be traced).
      mask: optional pytree of booleans (or a function of the params returning one) selecting
        the leaves to penalise, as in ``optax.add_decayed_weights``.

    Returns:
      An ``optax.GradientTransformation``; its ``update`` needs ``params``.
    """
    if isinstance(l1, numbers.Real):  # an array (traced, per run) is checked by its caller
        check_real("l1", l1, minimum=0.0)

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None):
        if params is None:
            raise ValueError("add_l1_penalty needs params in update(updates, state, params)")
        new = jax.tree.map(
            lambda g, w: g + jnp.asarray(l1, g.dtype) * jnp.sign(w).astype(g.dtype),
            updates,
            params,
        )
        return new, state

    tx = optax.GradientTransformation(init_fn, update_fn)
    return tx if mask is None else optax.masked(tx, mask)


def clip_by_global_norm(max_norm: float | jax.Array) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm`` with an overflow-safe norm and ``max_norm = inf`` as off.

    Rescales the updates to global norm ``max_norm`` when their norm exceeds it, as optax
    does. Two differences matter for exploding runs: optax squares each entry, so in float32 a
    gradient of 1e20 has norm inf and is "clipped" to 0 (or NaN with ``max_norm = inf``); here
    the norm is computed with :func:`gradjax.utils.numerics.safe_norm`, and ``max_norm = inf``
    passes updates through unchanged, so clipping can be switched off per run under ``vmap``.

    Args:
      max_norm: the largest allowed global norm (> 0, may be traced, ``inf`` for no clipping).

    Returns:
      An ``optax.GradientTransformation``.
    """
    if isinstance(max_norm, numbers.Real) and max_norm != float("inf"):
        check_real("max_norm", max_norm, strictly_positive=True)

    def init_fn(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates: Any, state: optax.EmptyState, params: Any = None):
        del params
        leaves = jax.tree.leaves(updates)
        # From the same per-group norms that record_gradient_norms takes of these gradients:
        # in one compiled step XLA then reduces every gradient tensor once, not twice.
        norms = [n.astype(leaves[0].dtype) for n in group_norms(updates).values()]
        g_norm = safe_norm(jnp.stack(norms))
        limit = jnp.asarray(max_norm, g_norm.dtype)
        keep = (g_norm <= limit) | jnp.isinf(limit)
        factor = jnp.where(
            keep, jnp.ones_like(g_norm), limit / jnp.where(keep, jnp.ones_like(g_norm), g_norm)
        )
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def warmup_cosine(
    step: jax.Array,
    *,
    peak_value: float | jax.Array,
    warmup_steps: float | jax.Array,
    total_steps: float | jax.Array,
    end_value: float | jax.Array = 0.0,
    init_value: float | jax.Array = 0.0,
) -> jax.Array:
    """Linear warm-up then cosine decay, traceable in every argument.

    The same function as ``optax.warmup_cosine_decay_schedule(init_value, peak_value,
    warmup_steps, total_steps, end_value)``, but written with ``jnp.where`` so that the peak,
    the warm-up length and the total length may be traced values (a vmap axis): optax's
    version branches on them in Python. ``warmup_steps = 0`` starts the cosine at step 0.

    Args:
      step: the step count (0 at the first update).
      peak_value: value at the end of warm-up.
      warmup_steps: warm-up length (>= 0).
      total_steps: step at which the decay reaches ``end_value`` (includes the warm-up).
      end_value: value from ``total_steps`` on.
      init_value: value at step 0 when there is a warm-up.

    Returns:
      The scheduled value, in the dtype of ``peak_value``.
    """
    peak = jnp.asarray(peak_value)
    dtype = peak.dtype if jnp.issubdtype(peak.dtype, jnp.floating) else jnp.float32
    t, w, T, peak, end, init = (
        jnp.asarray(v).astype(dtype)
        for v in (step, warmup_steps, total_steps, peak_value, end_value, init_value)
    )
    one = jnp.ones((), dtype)
    ramp = init + (peak - init) * t / jnp.maximum(w, one)
    progress = jnp.clip((t - w) / jnp.maximum(T - w, one), 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (one + jnp.cos(jnp.asarray(jnp.pi, dtype) * progress))
    return jnp.where(t < w, ramp, cosine)


def _mitigation_core(
    optimizer: str,
    learning_rate: jax.Array,
    warmup_steps: jax.Array,
    total_steps: jax.Array,
    end_lr_fraction: jax.Array,
    clip: jax.Array | None,
    weight_decay: jax.Array | None,
    decoupled_weight_decay: jax.Array | None,
    l1: jax.Array | None,
    momentum: float,
) -> optax.GradientTransformation:
    # Order: clip the loss gradient, add the penalties' gradients (L1/L2 regularisation of the
    # loss, as the article describes), precondition, add the decoupled decay (after the
    # preconditioner, so Adam does not rescale it: AdamW), then scale by the learning rate.
    if optimizer == "adamw":
        # AdamW is Adam with its weight_decay decoupled; the state keeps the name
        # "weight_decay", so the same hyper-parameter name varies it for every optimiser.
        optimizer, weight_decay, decoupled_weight_decay = "adam", None, weight_decay
    parts = []
    if clip is not None:
        parts.append(clip_by_global_norm(clip))
    if l1 is not None:
        parts.append(add_l1_penalty(l1))
    if weight_decay is not None:
        parts.append(optax.add_decayed_weights(weight_decay))
    if optimizer == "momentum":
        parts.append(optax.trace(decay=momentum))
    elif optimizer == "adam":
        parts.append(optax.scale_by_adam(b1=momentum))
    if decoupled_weight_decay is not None:
        parts.append(optax.add_decayed_weights(decoupled_weight_decay))

    def schedule(count: jax.Array) -> jax.Array:
        return -warmup_cosine(
            count,
            peak_value=learning_rate,
            warmup_steps=warmup_steps,
            total_steps=total_steps,
            end_value=learning_rate * end_lr_fraction,
        )

    parts.append(optax.scale_by_schedule(schedule))
    return optax.chain(*parts)


def mitigation_chain(
    *,
    optimizer: str = "sgd",
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    end_lr_fraction: float = 0.0,
    clip: float | None = None,
    weight_decay: float | None = None,
    decoupled_weight_decay: float | None = None,
    l1: float | None = None,
    momentum: float = 0.9,
    record_norms: bool = True,
    group_fn: GroupFn | None = None,
) -> optax.GradientTransformation:
    """The article's fixes for exploding gradients as one Optax chain.

    ``record_gradient_norms`` (raw gradients) -> :func:`clip_by_global_norm` -> L1 penalty ->
    ``add_decayed_weights`` (coupled L2) -> SGD / momentum / Adam -> decoupled weight decay ->
    warm-up + cosine learning rate.

    Two weight decays: ``weight_decay`` is coupled L2, ``lambda * w`` added to the gradient
    before the optimiser (Adam then divides it by its running gradient scale);
    ``decoupled_weight_decay`` adds ``lambda * w`` after the optimiser, so every weight
    shrinks by ``lr(t) * lambda * w`` per step whatever its gradient history (Loshchilov &
    Hutter 2019). ``optimizer="adamw"`` is Adam with ``weight_decay`` decoupled: the chain
    equals ``optax.adamw(learning_rate, b1=momentum, weight_decay=weight_decay)``. For plain
    SGD the two decays coincide.

    Every numeric hyper-parameter lives in the state through ``optax.inject_hyperparams``, so
    one compiled step serves many values: :func:`set_hyperparams` writes per-run values
    (e.g. under ``vmap``). A mitigation given as ``None`` is left out of the chain; give it a
    number (``clip=math.inf``, ``weight_decay=0.0``) to keep it in and vary it per run; with
    both ``weight_decay=0.0`` and ``decoupled_weight_decay=0.0`` one compiled chain runs
    coupled and decoupled decay side by side under ``vmap``.

    State layout: ``(GradientNormState, InjectStatefulHyperparamsState)`` when
    ``record_norms``, else just the second; see :func:`recorded_norms` and
    :func:`get_hyperparams`.

    Args:
      optimizer: ``"sgd"``, ``"momentum"``, ``"adam"`` or ``"adamw"`` (Adam whose
        ``weight_decay`` is decoupled).
      learning_rate: peak learning rate, > 0.
      total_steps: training length; the cosine decay ends there.
      warmup_steps: linear warm-up length, in ``[0, total_steps]``.
      end_lr_fraction: final learning rate / peak, in ``[0, 1]``.
      clip: maximum global gradient norm (> 0, ``math.inf`` for "present but off"), or None.
      weight_decay: L2 coefficient (>= 0; decoupled for ``"adamw"``) or None.
      decoupled_weight_decay: decoupled decay coefficient (>= 0) or None; not with
        ``"adamw"``, whose ``weight_decay`` already is.
      l1: L1 coefficient (>= 0) or None.
      momentum: heavy-ball momentum, or Adam's b1, in ``[0, 1)``.
      record_norms: put :func:`record_gradient_norms` first in the chain.
      group_fn: the grouping of the recorded norms (default :func:`group_norms`).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      GradjaxInputError: on a non-positive learning rate, ``clip <= 0``, a warm-up longer
        than training, an unknown optimiser, negative penalties, or
        ``decoupled_weight_decay`` with ``"adamw"``.

    Example:
      >>> import jax.numpy as jnp
      >>> tx = mitigation_chain(optimizer="adam", learning_rate=1e-3, total_steps=100,
      ...                       warmup_steps=10, clip=1.0)
      >>> state = tx.init({"w": jnp.zeros(3)})
      >>> float(get_hyperparams(state)["clip"])
      1.0
    """
    check_choice("optimizer", optimizer, OPTIMIZERS)
    check_real("learning_rate", learning_rate, strictly_positive=True)
    check_int("total_steps", total_steps, minimum=1)
    check_int("warmup_steps", warmup_steps, minimum=0)
    if warmup_steps > total_steps:
        raise invalid("warmup_steps", warmup_steps, f"an integer in [0, steps={total_steps}]")
    check_real("end_lr_fraction", end_lr_fraction, minimum=0.0)
    if end_lr_fraction > 1:
        raise invalid("end_lr_fraction", end_lr_fraction, "a number in [0, 1]")
    if clip is not None and not (isinstance(clip, (int, float)) and clip == math.inf):
        check_real("clip", clip, strictly_positive=True)
    if weight_decay is not None:
        check_real("weight_decay", weight_decay, minimum=0.0)
    if decoupled_weight_decay is not None:
        check_real("decoupled_weight_decay", decoupled_weight_decay, minimum=0.0)
        if optimizer == "adamw":
            raise invalid(
                "decoupled_weight_decay",
                decoupled_weight_decay,
                "None with optimizer='adamw' (its weight_decay is the decoupled one)",
            )
    if l1 is not None:
        check_real("l1", l1, minimum=0.0)
    check_real("momentum", momentum, minimum=0.0)
    if momentum >= 1:
        raise invalid("momentum", momentum, "a number in [0, 1)")
    as_float = lambda v: None if v is None else float(v)
    # momentum is static: optax's Adam bias correction computes b1**count, which fails
    # strict dtype promotion when b1 is a traced float array and count an int.
    core = optax.inject_hyperparams(_mitigation_core, static_args=("optimizer", "momentum"))(
        optimizer=optimizer,
        learning_rate=float(learning_rate),
        warmup_steps=float(warmup_steps),
        total_steps=float(total_steps),
        end_lr_fraction=float(end_lr_fraction),
        clip=as_float(clip),
        weight_decay=as_float(weight_decay),
        decoupled_weight_decay=as_float(decoupled_weight_decay),
        l1=as_float(l1),
        momentum=float(momentum),
    )
    if not record_norms:
        return core
    return optax.chain(record_gradient_norms(group_fn), core)


def _inject_index(state: Any) -> int | None:
    if isinstance(state, tuple) and not hasattr(state, "hyperparams"):
        for i, part in enumerate(state):
            if hasattr(part, "hyperparams"):
                return i
    return None


def get_hyperparams(state: Any) -> dict[str, jax.Array]:
    """The hyper-parameters held in a :func:`mitigation_chain` state (name -> array)."""
    i = _inject_index(state)
    inner = state if i is None else state[i]
    if not hasattr(inner, "hyperparams"):
        raise invalid("state", type(state).__name__, "the state of a mitigation_chain")
    return dict(inner.hyperparams)


def set_hyperparams(state: Any, **values: float | jax.Array) -> Any:
    """A copy of a :func:`mitigation_chain` state with new hyper-parameter values.

    Works on traced values, so ``jax.vmap(lambda lr: set_hyperparams(s, learning_rate=lr))``
    gives one state per learning rate. Each value is cast to the stored dtype.

    Args:
      state: the chain's state.
      **values: hyper-parameters to replace (names from :data:`HYPERPARAMS` that the chain
        contains).

    Returns:
      The new state.

    Raises:
      GradjaxInputError: for a name the chain does not hold (e.g. ``clip`` on a chain built
        with ``clip=None``).
    """
    i = _inject_index(state)
    inner = state if i is None else state[i]
    if not hasattr(inner, "hyperparams"):
        raise invalid("state", type(state).__name__, "the state of a mitigation_chain")
    hyper = dict(inner.hyperparams)
    for name, value in values.items():
        if name not in hyper:
            raise invalid(
                "hyper-parameter", name, "one of " + ", ".join(sorted(hyper)) + " for this chain"
            )
        hyper[name] = jnp.asarray(value).astype(hyper[name].dtype).reshape(hyper[name].shape)
    inner = inner._replace(hyperparams=hyper)
    if i is None:
        return inner
    return (*state[:i], inner, *state[i + 1 :])


def recorded_norms(state: Any) -> dict[str, jax.Array]:
    """The gradient norms kept by :func:`record_gradient_norms` inside a chain's state."""
    parts = state if isinstance(state, tuple) and not hasattr(state, "norms") else (state,)
    for part in parts:
        if isinstance(part, GradientNormState):
            return part.norms
    raise invalid("state", type(state).__name__, "a state holding a GradientNormState")


def chain_from_config(tcfg: TrainConfig, **overrides: Any) -> optax.GradientTransformation:
    """The :func:`mitigation_chain` of a :class:`~gradjax.training.config.TrainConfig`.

    Args:
      tcfg: the training configuration.
      **overrides: keyword arguments of :func:`mitigation_chain` that replace the config's
        (e.g. ``clip=math.inf`` to keep clipping in the chain as a vmap axis).

    Returns:
      The transformation.
    """
    kwargs = dict(
        optimizer=tcfg.optimizer,
        learning_rate=tcfg.learning_rate,
        total_steps=tcfg.steps,
        warmup_steps=tcfg.warmup_steps,
        end_lr_fraction=tcfg.end_lr_fraction,
        clip=tcfg.clip,
        weight_decay=tcfg.weight_decay if tcfg.weight_decay > 0 else None,
        l1=tcfg.l1 if tcfg.l1 > 0 else None,
        momentum=tcfg.momentum,
    )
    kwargs.update(overrides)
    return mitigation_chain(**kwargs)
