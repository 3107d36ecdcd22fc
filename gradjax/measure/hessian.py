"""Matrix-free Hessian probe for any scalar loss of a parameter pytree.

The curvature numbers the edge-of-stability story needs (Cohen et al. 2021; Gilmer et al.
2021) are the sharpness, the largest eigenvalue of the Hessian of the loss, and its trace.
Neither needs the Hessian itself: both come from Hessian-vector products
``H v = d/de grad L(theta + e v)``, a forward-mode derivative (``jax.jvp``) of the reverse-mode
gradient, which costs a small multiple of one gradient and no ``P x P`` matrix:

* the sharpness by Lanczos (:func:`gradjax.measure.matrix_free.lanczos_top_eigenvalue`): the top
Ritz
  value never exceeds the largest eigenvalue, and the Ritz residual bounds its distance to an
  eigenvalue;
* the trace by Hutchinson (:func:`gradjax.measure.matrix_free.hutchinson_trace`): ``E[v^T H v]``
over
  Rademacher ``v``, with the standard error of the probe mean.

``loss_fn(params) -> scalar`` is any function of any pytree: gradjax's own parameter dicts, a
Flax Linen ``{"params": ...}`` collection or an NNX state. Floating leaves are the
coordinates; integer or boolean leaves (step counters, masks) are held fixed. Everything is
pure, takes an explicit key and works under ``jit`` and ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradjax.measure.matrix_free import (
    TopEigenvalue,
    TraceEstimate,
    hutchinson_trace,
    lanczos_top_eigenvalue,
)
from gradjax.utils.errors import check_int, invalid
from gradjax.utils.pytree import pytree_dataclass, static_field

LossFn = Callable[[Any], jax.Array]

__all__ = [
    "HessianEstimate",
    "hessian_estimates",
    "hessian_top_eigenvalue",
    "hessian_trace",
    "hessian_vector_product",
]


@pytree_dataclass
class HessianEstimate:
    """Sharpness and trace of the Hessian of a loss at one point.

    Attributes:
      top_eigenvalue: the sharpness: the largest eigenvalue of the Hessian (Lanczos top Ritz
        value, a lower bound on it).
      top_error: the Ritz residual ``||H x - lambda x||`` (a bound on the distance from
        ``top_eigenvalue`` to an eigenvalue of H).
      trace: Hutchinson's estimate of ``tr(H)``.
      trace_stderr: its standard error.
      size: number of parameters (floating coordinates).
      lanczos_steps: Lanczos steps used.
      probes: Hutchinson probes used.
    """

    top_eigenvalue: jax.Array
    top_error: jax.Array
    trace: jax.Array
    trace_stderr: jax.Array
    size: int = static_field(default=0)
    lanczos_steps: int = static_field(default=0)
    probes: int = static_field(default=0)


def _flat_operator(loss_fn: LossFn, params: Any) -> tuple[Callable, int, jnp.dtype]:
    """``v -> H v`` on the flat vector of ``params``' floating leaves, its size and dtype."""
    if not callable(loss_fn):
        raise invalid("loss_fn", loss_fn, "a callable loss_fn(params) -> scalar")
    leaves, treedef = jax.tree.flatten(params)
    floating = [jnp.issubdtype(jnp.result_type(leaf), jnp.inexact) for leaf in leaves]
    if not any(floating):
        raise invalid("params", type(params).__name__, "a pytree with floating-point leaves")
    var = [jnp.asarray(leaf) for leaf, f in zip(leaves, floating, strict=True) if f]
    dtype = jnp.result_type(*var)
    shapes = [v.shape for v in var]
    sizes = [v.size for v in var]
    splits = [sum(sizes[: i + 1]) for i in range(len(sizes) - 1)]

    def rebuild(var_leaves):
        it = iter(var_leaves)
        full = [next(it) if f else leaf for leaf, f in zip(leaves, floating, strict=True)]
        return jax.tree.unflatten(treedef, full)

    def loss_of(var_leaves):
        value = jnp.asarray(loss_fn(rebuild(var_leaves)))
        if value.shape != ():
            raise invalid("loss_fn(params).shape", value.shape, "() (a scalar loss)")
        return value

    grad = jax.grad(loss_of)
    # One linearisation of the gradient: every product reuses the stored forward pass.
    _, hvp = jax.linearize(grad, var)

    def operator(flat: jax.Array) -> jax.Array:
        parts = jnp.split(flat, splits) if splits else [flat]
        tangent = [p.reshape(s).astype(v.dtype) for p, s, v in zip(parts, shapes, var, strict=True)]
        return jnp.concatenate([t.reshape(-1).astype(dtype) for t in hvp(tangent)])

    return operator, sum(sizes), dtype


def hessian_vector_product(loss_fn: LossFn, params: Any, tangent: Any) -> Any:
    """``H v``: the derivative of ``grad loss_fn`` at ``params`` in the direction ``tangent``.

    Forward-over-reverse (``jax.jvp`` of ``jax.grad``): one product costs about as much as two
    gradients, and no Hessian is formed.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: the point (a pytree).
      tangent: the direction, a pytree of the same structure (floating leaves).

    Returns:
      ``H v`` with the structure of ``params``.

    Example:
      >>> import jax.numpy as jnp, gradjax as gj
      >>> loss = lambda p: jnp.sum(p["w"] ** 2)
      >>> gj.hessian.hessian_vector_product(loss, {"w": jnp.ones(2)}, {"w": jnp.ones(2)})
      {'w': Array([2., 2.], dtype=float32)}
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (tangent,))[1]


def hessian_top_eigenvalue(
    loss_fn: LossFn, params: Any, key: jax.Array, *, steps: int = 20
) -> TopEigenvalue:
    """The sharpness (largest Hessian eigenvalue) of ``loss_fn`` at ``params``, by Lanczos.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: the point (a pytree; floating leaves are the coordinates).
      key: PRNG key for the start vector.
      steps: Lanczos steps (one Hessian-vector product each; capped at the parameter count).

    Returns:
      A :class:`gradjax.measure.matrix_free.TopEigenvalue` (value and Ritz-residual error bar).
    """
    check_int("steps", steps, minimum=1)
    op, size, dtype = _flat_operator(loss_fn, params)
    return lanczos_top_eigenvalue(op, key, size=size, dtype=dtype, steps=steps)


def hessian_trace(
    loss_fn: LossFn, params: Any, key: jax.Array, *, probes: int = 64
) -> TraceEstimate:
    """``tr(H)`` of ``loss_fn`` at ``params`` by Hutchinson's estimator.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``.
      params: the point (a pytree; floating leaves are the coordinates).
      key: PRNG key for the Rademacher probes.
      probes: number of probes (>= 2; the error falls as ``1/sqrt(probes)``).

    Returns:
      A :class:`gradjax.measure.matrix_free.TraceEstimate` (value and standard error).
    """
    check_int("probes", probes, minimum=2)
    op, size, dtype = _flat_operator(loss_fn, params)
    return hutchinson_trace(
        lambda v: jnp.vdot(v, op(v)), key, in_shape=(size,), dtype=dtype, probes=probes
    )


def hessian_estimates(
    loss_fn: LossFn, params: Any, key: jax.Array, *, steps: int = 20, probes: int = 32
) -> HessianEstimate:
    """Sharpness and trace of the Hessian of ``loss_fn`` at ``params``, matrix-free.

    Args:
      loss_fn: ``loss_fn(params) -> scalar``, e.g. a training loss closed over a batch.
      params: the point (a pytree; floating leaves are the coordinates, others held fixed).
      key: PRNG key (split between the Lanczos start vector and the Hutchinson probes).
      steps: Lanczos steps.
      probes: Hutchinson probes.

    Returns:
      A :class:`HessianEstimate`.

    Example:
      >>> import jax, jax.numpy as jnp, gradjax as gj
      >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([3.0, 1.0]) * p ** 2)
      >>> est = gj.hessian.hessian_estimates(loss, jnp.ones(2), jax.random.key(0), probes=4)
      >>> round(float(est.top_eigenvalue), 4), round(float(est.trace), 4)
      (3.0, 4.0)
    """
    check_int("steps", steps, minimum=1)
    check_int("probes", probes, minimum=2)
    op, size, dtype = _flat_operator(loss_fn, params)
    k_top, k_trace = jax.random.split(key)
    top = lanczos_top_eigenvalue(op, k_top, size=size, dtype=dtype, steps=steps)
    trace = hutchinson_trace(
        lambda v: jnp.vdot(v, op(v)), k_trace, in_shape=(size,), dtype=dtype, probes=probes
    )
    return HessianEstimate(
        top_eigenvalue=top.value,
        top_error=top.error,
        trace=trace.value,
        trace_stderr=trace.stderr,
        size=size,
        lanczos_steps=top.steps,
        probes=probes,
    )
