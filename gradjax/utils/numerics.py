"""Overflow-safe norms: exploding runs are measured as finite until their values are not.

A float32 gradient entry of 1e20 squares to inf, so a plain ``sqrt(sum(x**2))`` reports an
overflow long before anything in the network is non-finite. Every norm gradjax records goes
through :func:`safe_norm` or :func:`safe_group_norms`, which divide by the largest magnitude
first, and only where the plain sum of squares overflowed (one check for many groups).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def safe_norm(x: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """The Euclidean (Frobenius) norm, without overflow for huge finite entries.

    Args:
      x: an array.
      axis: the axes to reduce (default all).

    Returns:
      The norm over ``axis`` in ``x``'s dtype; NaN where any entry is NaN, inf where an entry
      is infinite (and none is NaN).
    """
    x = jnp.asarray(x)
    scale = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    # An all-zero array keeps scale 1 so the division is exact and safe.
    usable = jnp.isfinite(scale) & (scale > 0)
    safe_scale = jnp.where(usable, scale, jnp.ones_like(scale))
    norm = jnp.sqrt(jnp.sum(jnp.square(x / safe_scale), axis=axis, keepdims=True)) * safe_scale
    # jnp.max propagates NaN, so a non-finite scale is NaN (a NaN entry) or inf (an inf entry):
    # exactly the norm's value in that case.
    norm = jnp.where(jnp.isfinite(scale), norm, scale)
    return jnp.squeeze(norm, axis=axis) if axis is not None else norm.reshape(())


def safe_group_norms(groups: Sequence[Sequence[jax.Array]]) -> list[jax.Array]:
    """Norms of groups of row-stacked arrays, one pass unless a sum of squares overflows.

    Each group is a list of arrays ``(rows, ...)`` sharing their leading axis (one row per
    layer, or a single row); a group's norm per row is the norm of all its arrays' entries in
    that row. The plain sums of squares are computed first; only if one of them is not
    finite does a single ``lax.cond`` switch every group to the scaled form of
    :func:`safe_norm`, so a healthy step pays one reduction per array.

    Args:
      groups: lists of arrays; within a group every array has the same leading size.

    Returns:
      One ``(rows,)`` array of norms per group.
    """
    flat = [[jnp.reshape(v, (v.shape[0], -1)) for v in group] for group in groups]
    totals = [sum(jnp.sum(jnp.square(v), axis=1) for v in group) for group in flat]
    healthy = jnp.all(jnp.stack([jnp.all(jnp.isfinite(t)) for t in totals]))

    def plain(_):
        return [jnp.sqrt(t) for t in totals]

    def scaled(_):
        return [_scaled_rows(group) for group in flat]

    return jax.lax.cond(healthy, plain, scaled, operand=None)


def _scaled_rows(rows: list[jax.Array]) -> jax.Array:
    """``scale * sqrt(sum((v / scale)^2))`` per row, ``scale`` the row's largest magnitude."""
    scale = jnp.max(jnp.stack([jnp.max(jnp.abs(v), axis=1) for v in rows]), axis=0)
    usable = jnp.isfinite(scale) & (scale > 0)
    safe = jnp.where(usable, scale, jnp.ones_like(scale))
    ss = sum(jnp.sum(jnp.square(v / safe[:, None]), axis=1) for v in rows)
    return jnp.where(jnp.isfinite(scale), jnp.sqrt(ss) * safe, scale)
