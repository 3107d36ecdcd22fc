"""The parameter layout of gradjax's own networks, and the only code that spells its keys.

A network of ``depth`` blocks keeps its parameters in three groups::

    {"input":   {"W": (N, D), "b": (N,), ...},          # block 0, never residual
     "hidden":  {"W": (L-1, N, N), "b": (L-1, N), ...}, # blocks 1..L-1, stacked on axis 0
     "readout": {"W": (O, N), "b": (O,)}}

A block's dict may also hold ``"gamma"``/``"beta"`` (norm scale and shift), ``"gain"`` (the
SkipInit/ReZero branch gain, hidden blocks only), ``"W2"``/``"b2"`` (the second weight layer
of a two-layer residual branch) and the lazy scales ``"w_scale"``/``"b_scale"``. Stacking the
hidden blocks lets ``lax.scan`` run a deep network with one compiled block and lets per-layer
diagnostics ``vmap`` over the layer axis.

Block indices are Python ints in ``[0, depth)``: 0 is the input block, ``l >= 1`` is row
``l - 1`` of the hidden stack. Gradients from ``jax.grad`` have the same structure as the
parameters, so every accessor here works on them too. Everything returns new dicts; nothing
is mutated, so the accessors are safe under ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from gradjax.utils.errors import invalid
from gradjax.utils.numerics import safe_norm

Layer = dict[str, jax.Array]
Params = dict[str, Layer]

INPUT = "input"
HIDDEN = "hidden"
READOUT = "readout"
GROUPS = (INPUT, HIDDEN, READOUT)
# Groups whose leaves stack one block per row of their leading axis.
STACKED_GROUPS = (HIDDEN,)
GAIN = "gain"


def make_params(*, input: Layer, hidden: Layer, readout: Layer) -> Params:
    """Assembles a parameter pytree from its three groups.

    Args:
      input: the input block's leaves (``W`` of shape (N, D), ``b``, ...).
      hidden: the hidden blocks' leaves, stacked on axis 0 (``W`` of shape (L-1, N, N), ...).
      readout: the readout's leaves (``W`` of shape (O, N), ``b``).

    Returns:
      The parameter dict.
    """
    return {INPUT: dict(input), HIDDEN: dict(hidden), READOUT: dict(readout)}


def input_layer(params: Params) -> Layer:
    """The input block's leaves (block 0)."""
    return params[INPUT]


def hidden_layers(params: Params) -> Layer:
    """The hidden blocks' leaves, stacked on axis 0 (blocks 1..depth-1)."""
    return params[HIDDEN]


def readout_layer(params: Params) -> Layer:
    """The linear readout's leaves."""
    return params[READOUT]


def depth(params: Params) -> int:
    """The number of blocks (the readout not counted), from the shapes."""
    return 1 + int(params[HIDDEN]["W"].shape[0])


def _check_index(params: Params, index: int) -> int:
    n = depth(params)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        raise invalid("index", index, f"an int in [0, {n})")
    return index


def layer(params: Params, index: int) -> Layer:
    """The leaves of block ``index`` (0 = the input block), unstacked.

    Args:
      params: parameters (or gradients) in this layout.
      index: a Python int in ``[0, depth)``.

    Returns:
      That block's leaf dict.
    """
    index = _check_index(params, index)
    if index == 0:
        return params[INPUT]
    return jax.tree.map(lambda leaf: leaf[index - 1], params[HIDDEN])


def layer_weight(params: Params, index: int, leaf: str = "W") -> jax.Array:
    """One block's weight matrix (or another leaf, e.g. ``"b"``)."""
    return layer(params, index)[leaf]


def hidden_weights(params: Params, leaf: str = "W") -> jax.Array:
    """The stacked hidden weights, ``(depth-1, N, N)`` (or another stacked leaf)."""
    return params[HIDDEN][leaf]


def readout_weight(params: Params) -> jax.Array:
    """The readout matrix, ``(out_dim, N)``."""
    return params[READOUT]["W"]


def block_leaves(params: Params, leaf: str = "W") -> tuple[jax.Array, jax.Array]:
    """``(input block's leaf, stacked hidden leaves)``: the per-block view of one leaf."""
    return params[INPUT][leaf], params[HIDDEN][leaf]


def layer_norms(tree: Params, leaf: str = "W") -> jax.Array:
    """Frobenius norm of one leaf in every block, ``(depth,)``, overflow-safe.

    Args:
      tree: parameters or gradients in this layout.
      leaf: the leaf name (``"W"``, ``"b"``, ...).

    Returns:
      ``[||leaf_0||, ||leaf_1||, ..., ||leaf_{L-1}||]``.
    """
    first, rest = block_leaves(tree, leaf)
    rest_axes = tuple(range(1, rest.ndim))
    return jnp.concatenate([safe_norm(first)[None], safe_norm(rest, axis=rest_axes)])


def replace_layer(params: Params, index: int, **leaves: jax.Array) -> Params:
    """A copy of ``params`` with some leaves of block ``index`` replaced.

    Args:
      params: parameters in this layout.
      index: a Python int in ``[0, depth)``.
      **leaves: new values, e.g. ``W=...``, ``b=...``, shaped like one block's leaf.

    Returns:
      New parameters; ``params`` is unchanged.
    """
    index = _check_index(params, index)
    out = {group: dict(values) for group, values in params.items()}
    for name, value in leaves.items():
        if index == 0:
            out[INPUT][name] = value
        else:
            out[HIDDEN][name] = out[HIDDEN][name].at[index - 1].set(value)
    return out


def scale_layer(
    params: Params, index: int, c: float | jax.Array, leaves: tuple[str, ...] = ("W", "b")
) -> Params:
    """A copy of ``params`` with block ``index``'s ``leaves`` multiplied by ``c``."""
    current = layer(params, index)
    return replace_layer(params, index, **{name: current[name] * c for name in leaves})


def residual_gain(params: Params) -> jax.Array | None:
    """The SkipInit/ReZero gains of the hidden blocks, ``(depth-1,)``; ``None`` if absent."""
    return params[HIDDEN].get(GAIN)


def with_residual_gain(params: Params, gain: float | jax.Array) -> Params:
    """A copy with every hidden block's SkipInit gain set to ``gain`` (broadcast).

    Args:
      params: parameters of a SkipInit network (they hold a gain).
      gain: a scalar or ``(depth-1,)`` array; may be traced.

    Returns:
      New parameters.
    """
    current = residual_gain(params)
    if current is None:
        raise invalid("params", "no 'gain' leaf", "parameters of a residual='skipinit' network")
    out = {group: dict(values) for group, values in params.items()}
    out[HIDDEN][GAIN] = jnp.broadcast_to(jnp.asarray(gain, current.dtype), current.shape)
    return out


def map_groups(fn: Callable[[str, Layer], Layer], params: Mapping[str, Layer]) -> Params:
    """``{group: fn(group, leaves)}`` over the three groups, in layout order."""
    return {group: fn(group, leaves) for group, leaves in params.items()}


def group_fans(*, input_dim: int, width: int, out_dim: int) -> dict[str, tuple[int, int]]:
    """``(fan_in, fan_out)`` of each group's main weight ``W``."""
    return {
        INPUT: (input_dim, width),
        HIDDEN: (width, width),
        READOUT: (width, out_dim),
    }
