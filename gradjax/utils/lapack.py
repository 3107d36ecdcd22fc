"""How gradjax calls jaxlib's CPU LAPACK kernels: one after another, and on every core.

Two jobs, both for programs that run on a CPU; when JAX's default backend is anything else
(GPU, TPU) nothing of this module is compiled or run: :func:`after` returns its input and
:func:`singular_values` is ``jnp.linalg.svd``.

1. **Order** (:func:`after`). jaxlib's CPU LAPACK kernels (SVD, QR, eigh) split a batch over
   XLA's intra-op thread pool and block until every piece is done. Two such kernels that XLA
   starts at the same time can each hold a pool thread while waiting for pieces that need a
   free one; with a two-thread pool (two cores) that waits forever. It happens in an
   orthogonal initialisation: the QR of one weight group and the orthogonal-factor step of
   another, each blocked in jaxlib's batch loop with no pool thread left. gradjax never
   leaves two LAPACK calls of one program independent of each other: :func:`after` makes
   the input of the next call read data of the output of the previous one.
2. **Placement** (:func:`singular_values`). The same kernels spread a batch over the pool
   only when the thread that starts them is not itself a pool thread: a pool thread that
   starts one blocks while another thread runs every piece. ``jnp.linalg.svd`` copies its
   input first (the kernel wants column-major matrices), that copy is split over the pool,
   so the kernel starts on a pool thread about half the time, and the batch then runs on
   one thread. :func:`singular_values` calls the same kernel (``gesdd``) with nothing before
   it: it reads each row-major matrix as the column-major transpose, which has the same
   singular values, and lets the kernel copy its input itself.

The direct call uses jaxlib's own LAPACK entry points (``jaxlib.lapack.prepare_lapack_call``
and the ``lapack_?gesdd_ffi`` FFI targets), which are not public API. Its contract is checked
once per dtype, on the CPU, against float64 NumPy; if the check fails, a warning says so and
:func:`singular_values` is ``jnp.linalg.svd``. :data:`SUPPORTED_JAXLIB` is the jaxlib range
this is written for: ``tests/test_lapack.py`` fails when a jaxlib in it lacks the kernel.

How many BLAS threads each of these LAPACK calls uses is :mod:`gradjax.utils.threads`' rule.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.utils import threads

#: jaxlib versions ``[low, high)`` whose ``lapack_?gesdd_ffi`` kernels :func:`singular_values`
#: calls directly (``high`` ``None``: no upper end known). The lower end is pyproject's bound.
SUPPORTED_JAXLIB = ((0, 10, 0), None)


def on_cpu() -> bool:
    """Whether JAX's default backend is the CPU: the only case this module acts in."""
    return jax.default_backend() == "cpu"


def after(x: Any, *deps: Any) -> Any:
    """``x``, made to depend on data of every array in ``deps``, so it is computed after them.

    XLA's CPU runtime orders its steps by the buffers they read and write, not by the program
    text: an optimisation barrier, which only renames buffers, does not order two LAPACK
    calls. Here every floating leaf of ``x`` gets ``-0.0`` added, computed from one element
    of each array in ``deps``: the sum is ``x`` exactly (adding ``-0.0`` changes no value, not
    even a zero's sign), but the step that computes it must read those elements, so it waits
    for the steps that wrote them. Off the CPU (see :func:`on_cpu`) ``x`` is returned as it
    is: other backends' solvers do not share XLA's CPU pool, so there is nothing to order.

    Args:
      x: a pytree of arrays (typically the input of a LAPACK call).
      *deps: pytrees of arrays (typically the outputs of the previous LAPACK call).

    Returns:
      ``x``, unchanged in value, computed after ``deps`` on a CPU.
    """
    if not on_cpu():
        return x
    elements = [jnp.ravel(_numeric(d))[0] for d in jax.tree.leaves(deps) if jnp.size(d) > 0]
    if not elements:  # nothing to wait for
        return x
    # |clip(e)| * 0 is +0.0 for any element, NaN and inf included; XLA does not fold a float
    # product by zero (it is not an identity for NaN and inf), so the read stays.
    zero = sum(
        jnp.abs(jnp.clip(jnp.nan_to_num(jnp.real(e).astype(jnp.float32)), -1.0, 1.0)) * 0.0
        for e in elements
    )
    minus_zero = -zero

    def add(leaf):
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            return leaf
        return leaf + minus_zero.astype(leaf.dtype)

    return jax.tree.map(add, x)


def _numeric(a: Any) -> jax.Array:
    a = jnp.asarray(a) if not isinstance(a, jax.Array) else a
    return jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a


_DIRECT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def singular_values(x: jax.Array) -> jax.Array:
    """Singular values of a matrix or a batch of matrices, largest first, by LAPACK ``gesdd``.

    On a CPU, for float32 and float64, jaxlib's ``gesdd`` kernel is called directly (see the
    module docstring for why); everywhere else, and wherever that call is not available or
    fails its one-time check, this is ``jnp.linalg.svd(x, compute_uv=False)``. Both give
    the same numbers to float rounding; it works under ``jit``, ``vmap`` and ``jvp``.
    Called outside a transformation on a batch of matrices, it runs under
    :func:`gradjax.utils.threads.batched_lapack` and returns a ready array.

    Args:
      x: ``(..., m, n)``.

    Returns:
      ``(..., min(m, n))``; NaN for a matrix on which LAPACK reports failure.
    """
    x = jnp.asarray(x)
    if not isinstance(x, jax.core.Tracer) and x.ndim > 2:
        # A concrete batch: one program, run under gradjax's thread rule and waited for.
        batch = int(np.prod(x.shape[:-2]))
        return threads.run_batched(_singular_values_jit, x, batch=batch)
    return _singular_values(x)


def _singular_values(x: jax.Array) -> jax.Array:
    direct = x.ndim >= 2 and 0 not in x.shape[-2:] and x.dtype in _DIRECT_DTYPES
    if not direct or not on_cpu() or _gesdd_target(x.dtype) is None:
        return _jnp_singular_values(x)
    return _singular_values_differentiable(x)


_singular_values_jit = jax.jit(_singular_values)


def _jnp_singular_values(x: jax.Array) -> jax.Array:
    return jnp.linalg.svd(x, compute_uv=False)


@jax.custom_jvp
def _singular_values_differentiable(x: jax.Array) -> jax.Array:
    return jax.lax.platform_dependent(x, cpu=_gesdd_singular_values, default=_jnp_singular_values)


@_singular_values_differentiable.defjvp
def _singular_values_jvp(primals, tangents):
    # d sigma_i = u_i^T dX v_i: jnp.linalg.svd's own rule, on the same singular values.
    (x,), (t,) = primals, tangents
    s = _singular_values_differentiable(x)
    return s, jax.jvp(_jnp_singular_values, (x,), (t,))[1]


def _gesdd_singular_values(x: jax.Array) -> jax.Array:
    s, info = _gesdd(_gesdd_target(x.dtype), x)
    return jnp.where((info == 0)[..., None], s, jnp.nan)


def _gesdd(target: str, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(singular values, LAPACK info)`` of ``x`` (``(..., m, n)``) from the FFI ``target``."""
    *batch, m, n = x.shape
    dummy = jax.ShapeDtypeStruct((*batch, 1, 1), x.dtype)  # U, V^T: not computed in mode N
    call = jax.ffi.ffi_call(
        target,
        (
            jax.ShapeDtypeStruct((*batch, n, m), x.dtype),  # the kernel's scratch copy
            jax.ShapeDtypeStruct((*batch, min(m, n)), x.dtype),
            dummy,
            dummy,
            jax.ShapeDtypeStruct(tuple(batch), np.int32),
        ),
        vmap_method="broadcast_all",
    )
    # The kernel reads column-major matrices: the row-major (m, n) matrix in memory is the
    # column-major (n, m) transpose, whose singular values are the same. The reshape only
    # relabels the same memory, so XLA puts no copy before the call.
    _, s, _, _, info = call(x.reshape(*batch, n, m), mode=np.uint8(ord("N")))
    return s, info


@functools.cache
def _gesdd_target(dtype: np.dtype) -> str | None:
    """jaxlib's ``gesdd`` FFI target for ``dtype`` once it passed a check, else ``None``."""
    try:
        from jaxlib import lapack as jaxlib_lapack

        target = jaxlib_lapack.prepare_lapack_call("gesdd_ffi", np.dtype(dtype))
        sample = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(dtype)
        with jax.ensure_compile_time_eval(), jax.default_device(jax.devices("cpu")[0]):
            got, info = (np.asarray(a) for a in jax.jit(functools.partial(_gesdd, target))(sample))
        want = np.linalg.svd(sample.astype(np.float64), compute_uv=False)
        tol = 1e-4 if np.dtype(dtype) == np.float32 else 1e-10
        if np.any(info != 0) or not np.allclose(got, want, rtol=tol, atol=tol):
            raise ValueError(f"gave {got.tolist()} (info {info.tolist()}), not {want.tolist()}")
    except Exception as err:  # noqa: BLE001 - any failure means: use jnp.linalg.svd
        warnings.warn(
            f"gradjax: LAPACK gesdd cannot be called directly ({err!r:.300}); using "
            "jnp.linalg.svd, which may run a batch on one CPU thread",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return target
