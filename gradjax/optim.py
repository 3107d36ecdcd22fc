"""Optax transformations for studying and fixing exploding gradients.

Two kinds of transformation live here:

* :func:`record_gradient_norms` passes updates through unchanged and keeps the per-group
  (per-layer, for gradjax nets) gradient norms of the latest step in its state, computed
  inside ``jit``. Put it first in a chain to see the raw gradients.
* The mitigation chain (clipping, warm-up + cosine decay, L2 and L1 weight penalties around
  SGD, momentum or Adam) is built in the same module further down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

GroupFn = Callable[[Any], dict[str, jax.Array]]

# The pytree-path component under which gradjax stacks its hidden blocks (leading axis =
# layer). Leaves below it are split into one norm per layer.
STACKED_GROUP = "hidden"


def _key_name(key: Any) -> str:
    """The text of one pytree path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def safe_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """The Euclidean (Frobenius) norm, computed without overflow for huge finite entries.

    A float32 gradient of 1e20 squares to inf; exploding runs must still be measured as finite
    until the values themselves stop being finite, so the sum of squares is taken after
    dividing by the largest magnitude. Non-finite inputs give a non-finite norm.

    Args:
      x: an array.
      axis: the axes to reduce (default all).

    Returns:
      The norm over ``axis``, in ``x``'s dtype.
    """
    x = jnp.asarray(x)
    scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    # Zero arrays (and an all-zero row) keep scale 1 so the division is exact and safe.
    finite_pos = jnp.isfinite(scale) & (scale > 0)
    safe_scale = jnp.where(finite_pos, scale, jnp.ones_like(scale))
    norm = jnp.sqrt(jnp.sum(jnp.square(x / safe_scale), axis=axis, keepdims=True)) * safe_scale
    # jnp.max propagates nan, so a non-finite scale is nan (any nan) or inf (an inf entry):
    # exactly the norm's value in that case.
    norm = jnp.where(jnp.isfinite(scale), norm, scale)
    return jnp.squeeze(norm, axis=axis) if axis is not None else norm.reshape(())


def group_norms(tree: Any) -> dict[str, jax.Array]:
    """Named gradient norms of a pytree: one per leaf, one per layer for stacked blocks.

    Every leaf is named by its pytree path joined with ``"/"`` (``"input/W"``,
    ``"readout/b"``, ``"layers/0/kernel"`` for a Flax NNX state). A leaf whose path passes
    through a ``"hidden"`` entry holds stacked layers along its leading axis (gradjax's
    ``params["hidden"]``); it is split into per-layer norms named with the layer index
    inserted right after ``"hidden"``: ``"hidden/0/W"``, ``"hidden/1/W"``, ... (index 0 is
    network block 2, since block 1 is ``"input"``). Scalar leaves under ``"hidden"`` are kept
    whole.

    Args:
      tree: a pytree of arrays (gradients, updates or parameters).

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
    out: dict[str, jax.Array] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names = [_key_name(k) for k in path]
        leaf = jnp.asarray(leaf)
        if STACKED_GROUP in names and leaf.ndim >= 1:
            at = names.index(STACKED_GROUP) + 1
            per_layer = safe_norm(leaf.reshape(leaf.shape[0], -1), axis=1)
            for i in range(leaf.shape[0]):
                out["/".join([*names[:at], str(i), *names[at:]])] = per_layer[i]
        else:
            out["/".join(names)] = safe_norm(leaf)
    return out


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
