"""Lyapunov exponents of the chain-rule product by repeated QR re-orthonormalisation.

The input-output Jacobian of a deep network is the product ``J = J_L ... J_2 J_1`` of the
per-block Jacobians. Its singular values grow or shrink exponentially in depth, so the naive
product overflows or underflows (and loses every small singular value to round-off long before
that). The standard cure (Benettin et al. 1980; Eckmann & Ruelle 1985) carries an orthonormal
frame ``Q`` through the product instead of the product itself::

    J_l Q_{l-1} = Q_l R_l        (thin QR, one per layer)
    log-growth_i = sum_l log |R_l[i, i]|

Every step works on numbers of order one, so float32 is stable at any depth; the sums are the
logarithms of the ``k``-volume growth of the frame, and ``sum_l log|R_l[i,i]| / L`` converges to
the ``i``-th Lyapunov exponent. The per-layer maps ``J_l Q`` are Jacobian-vector products of
:meth:`gradjax.nets.models.Net.block` (never a materialised ``J_l``), so any gradjax network works:
residual branches, LayerNorm, any activation. BatchNorm couples the examples of a batch and has
no per-example Jacobian; it is refused with a clear error.

At finite depth the sums are not exactly the log singular values of ``J``: they are those of
``J Q_0`` for the starting frame ``Q_0``, and differ from ``log sigma_i(J)`` by an O(1) amount
(the starting frame's misalignment with the top right singular vectors). ``sweeps > 0`` removes
that: each sweep runs the frame back through ``J^T`` (vector-Jacobian products, again one QR per
layer) and forward again, which is subspace iteration on ``J^T J`` done in factored form. Its
error shrinks like ``(sigma_{i+1}/sigma_i)^(2 sweeps)``, so a few sweeps give the exact finite-
depth log singular values of the product without ever forming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradjax.nets import layout
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import GradjaxInputError, check_int, check_real, invalid
from gradjax.utils.pytree import pytree_dataclass, static_field

# (layer data, frame (n_in, k)) -> image of the frame (n_out, k)
LinearStep = Callable[[object, jax.Array], jax.Array]


@pytree_dataclass
class LyapunovSpectrum:
    """The growth rates of the chain-rule product ``J = J_L ... J_1``.

    Attributes:
      exponents: ``log_growth / depth``, ``(k,)``: the (finite-depth) Lyapunov exponents per
        layer, in QR order (descending in expectation, not sorted: sorting would bias them).
      log_growth: ``sum_l log|R_l[i, i]|``, ``(k,)``: the log of the growth of the frame's
        ``i``-th direction over the whole product; with ``sweeps > 0`` these are the log
        singular values ``log sigma_i(J)`` of the product itself.
      layer_log_r: ``log|R_l[i, i]|`` per layer, ``(depth, k)`` (from the last forward pass);
        its cumulative sum over layers gives the running log-growth at every depth.
      depth: number of factors ``L``.
    """

    exponents: jax.Array
    log_growth: jax.Array
    layer_log_r: jax.Array
    depth: int = static_field(default=0)


def _qr_step(q: jax.Array) -> tuple[jax.Array, jax.Array]:
    # Thin QR of the frame's image; |R_ii| is the growth of the i-th new direction. A zero R_ii
    # (a rank-deficient factor) gives log 0 = -inf: recorded as data, not an error.
    q_new, r = jnp.linalg.qr(q)
    return q_new, jnp.log(jnp.abs(jnp.diagonal(r)))


def _forward_pass(
    first: LinearStep,
    first_data: object,
    hidden: LinearStep,
    hidden_data: object,
    q0: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """One QR pass ``Q_0 -> Q_L``; returns the last frame and the ``(L, k)`` log-diagonals."""
    q, log_r0 = _qr_step(first(first_data, q0))

    def step(frame, data):
        return _qr_step(hidden(data, frame))

    q_last, log_r = jax.lax.scan(step, q, hidden_data)
    return q_last, jnp.concatenate([log_r0[None], log_r], axis=0)


def _backward_pass(
    first_t: LinearStep,
    first_data: object,
    hidden_t: LinearStep,
    hidden_data: object,
    p_last: jax.Array,
) -> jax.Array:
    """One QR pass through ``J^T = J_1^T ... J_L^T``, from the output frame to the input."""

    def step(frame, data):
        return _qr_step(hidden_t(data, frame))[0], None

    p, _ = jax.lax.scan(step, p_last, hidden_data, reverse=True)
    return _qr_step(first_t(first_data, p))[0]


def _qr_lyapunov(
    first: LinearStep,
    first_t: LinearStep,
    first_data: object,
    hidden: LinearStep,
    hidden_t: LinearStep,
    hidden_data: object,
    q0: jax.Array,
    sweeps: int,
    depth: int,
) -> LyapunovSpectrum:
    def sweep(_, q):
        q_last, _ = _forward_pass(first, first_data, hidden, hidden_data, q)
        return _backward_pass(first_t, first_data, hidden_t, hidden_data, q_last)

    # A loop, not an unrolled Python for: the compile cost does not grow with ``sweeps``.
    q = jax.lax.fori_loop(0, sweeps, sweep, q0) if sweeps else q0
    _, layer_log_r = _forward_pass(first, first_data, hidden, hidden_data, q)
    log_growth = jnp.sum(layer_log_r, axis=0)
    return LyapunovSpectrum(
        exponents=log_growth / depth,
        log_growth=log_growth,
        layer_log_r=layer_log_r,
        depth=depth,
    )


def _start_frame(key: jax.Array | None, n: int, k: int, dtype) -> jax.Array:
    # The first k coordinate axes, or a Haar-random k-frame when a key is given (a random frame
    # cannot sit exactly in a structured invariant subspace of the product).
    if key is None:
        return jnp.eye(n, k, dtype=dtype)
    a = jax.random.normal(key, (n, k), dtype)
    return jnp.linalg.qr(a)[0]


def _check_k(k: int | None, limit: int) -> int:
    if k is None:
        return limit
    check_int("k", k, minimum=1, maximum=limit)
    return k


def lyapunov_spectrum(
    net: Net,
    params: Params,
    x: jax.Array,
    *,
    k: int | None = None,
    sweeps: int = 0,
    key: jax.Array | None = None,
) -> LyapunovSpectrum:
    """Lyapunov exponents of a network's input-to-last-hidden Jacobian at one input.

    Example:
      >>> import jax, jax.numpy as jnp, gradjax as gj
      >>> net = gj.build(gj.NetConfig(depth=200, width=64, activation="linear",
      ...                             init="orthogonal", sigma_w=1.1))
      >>> spec = gj.lyapunov_spectrum(net, net.init(jax.random.key(0)), jnp.ones(64), k=8)
      >>> bool(jnp.allclose(spec.exponents, jnp.log(1.1), atol=1e-4))
      True

    Args:
      net: a network without BatchNorm.
      params: its parameters.
      x: one input, ``(input_dim,)``.
      k: number of leading exponents, in ``[1, min(width, input_dim)]``; default all of them.
      sweeps: backward-forward refinement sweeps (``>= 0``); with ``sweeps > 0`` the
        ``log_growth`` converges to the exact log singular values of the finite product.
      key: optional PRNG key for a Haar-random starting frame (default: coordinate axes).

    Returns:
      A :class:`LyapunovSpectrum` with ``depth = net.cfg.depth``.

    Raises:
      GradjaxInputError: ``k`` or ``sweeps`` out of range, BatchNorm, or a bad ``x`` shape.
    """
    cfg = net.cfg
    if cfg.norm == "batch":
        raise GradjaxInputError(
            "norm='batch' is invalid for Lyapunov exponents: BatchNorm couples the examples of "
            "a batch, so one example has no Jacobian of its own; use norm=None or 'layer'"
        )
    if jnp.ndim(x) != 1:
        raise invalid("x.shape", jnp.shape(x), f"({cfg.input_dim},), one example")
    net.check_input(x)
    k = _check_k(k, min(cfg.width, cfg.input_dim))
    check_int("sweeps", sweeps, minimum=0)
    x = jnp.asarray(x, net.dtype)
    acts = net.forward(params, x).act  # a_1 .. a_L; block l+1 is linearised at a_l

    def block_fn(layer, residual):
        return lambda a: net.block(layer, a, residual=residual)[2]

    def jvp_cols(layer, a, frame, residual):
        _, lin = jax.linearize(block_fn(layer, residual), a)
        return jax.vmap(lin, in_axes=1, out_axes=1)(frame)

    def vjp_cols(layer, a, frame, residual):
        _, pull = jax.vjp(block_fn(layer, residual), a)
        return jax.vmap(lambda c: pull(c)[0], in_axes=1, out_axes=1)(frame)

    first_data = (layout.input_layer(params), x)
    hidden_data = (layout.hidden_layers(params), acts[:-1])
    q0 = _start_frame(key, cfg.input_dim, k, net.dtype)
    return _qr_lyapunov(
        lambda d, f: jvp_cols(d[0], d[1], f, False),
        lambda d, f: vjp_cols(d[0], d[1], f, False),
        first_data,
        lambda d, f: jvp_cols(d[0], d[1], f, True),
        lambda d, f: vjp_cols(d[0], d[1], f, True),
        hidden_data,
        q0,
        sweeps,
        cfg.depth,
    )


def matrix_lyapunov_spectrum(
    matrices: jax.Array,
    *,
    k: int | None = None,
    sweeps: int = 0,
    key: jax.Array | None = None,
) -> LyapunovSpectrum:
    """Lyapunov exponents of ``M_L ... M_2 M_1`` for stacked square matrices.

    The same QR algorithm as :func:`lyapunov_spectrum`, for factors given explicitly (e.g.
    :meth:`gradjax.LayerJacobians.all_layers`, or random matrices).

    Args:
      matrices: ``(L, n, n)``, ``matrices[0]`` applied first.
      k: number of leading exponents, in ``[1, n]``; default ``n``.
      sweeps: refinement sweeps (``>= 0``), as in :func:`lyapunov_spectrum`.
      key: optional PRNG key for a Haar-random starting frame.

    Returns:
      A :class:`LyapunovSpectrum` with ``depth = L``.
    """
    if jnp.ndim(matrices) != 3 or matrices.shape[1] != matrices.shape[2]:
        raise invalid("matrices.shape", jnp.shape(matrices), "(depth, n, n) with depth >= 1")
    depth, n = matrices.shape[0], matrices.shape[1]
    check_int("depth", depth, minimum=1)
    k = _check_k(k, n)
    check_int("sweeps", sweeps, minimum=0)
    mul = lambda m, f: m @ f
    mul_t = lambda m, f: m.T @ f
    q0 = _start_frame(key, n, k, matrices.dtype)
    return _qr_lyapunov(mul, mul_t, matrices[0], mul, mul_t, matrices[1:], q0, sweeps, depth)


@pytree_dataclass
class GaussianExponents:
    """Closed-form Lyapunov exponents of a product of i.i.d. Gaussian matrices.

    Attributes:
      mean: ``lambda_i``, ``(k,)``, descending.
      var_per_layer: variance of one layer's ``log|R[i, i]|``, ``(k,)``; the exponent
        estimated from ``L`` layers has variance ``var_per_layer / L``.
    """

    mean: jax.Array
    var_per_layer: jax.Array


def gaussian_product_exponents(
    n: int, *, sigma_w: float = 1.0, k: int | None = None
) -> GaussianExponents:
    """Lyapunov exponents of ``W_L ... W_1`` with ``W_l`` i.i.d. ``N(0, sigma_w^2 / n)``, n x n.

    Rotation invariance makes the QR algorithm exact here (Newman 1986, Isopi & Newman 1992):
    ``W Q`` is again Gaussian and independent of the past, so by the Bartlett decomposition
    ``n |R_ii|^2 / sigma_w^2 ~ chi^2_{n-i+1}``, independently over layers and ``i``. Hence

        lambda_i = log sigma_w + (psi((n - i + 1) / 2) + log(2 / n)) / 2,
        Var(log|R_ii|) = psi'((n - i + 1) / 2) / 4,

    with ``psi`` the digamma function. This is a linear gradjax network with ``init="gaussian"``
    and ``input_dim == width == n``.

    Args:
      n: matrix size (``>= 1``).
      sigma_w: weight scale (``> 0``).
      k: number of exponents in ``[1, n]``; default ``n``.

    Returns:
      A :class:`GaussianExponents` (float32, or float64 when 64-bit JAX is on).
    """
    check_int("n", n, minimum=1)
    check_real("sigma_w", sigma_w, strictly_positive=True)
    k = _check_k(k, n)
    dof = (n - jnp.arange(k, dtype=jnp.result_type(float))) / 2.0  # (n - i + 1) / 2, i = 1..k
    mean = math.log(sigma_w) + 0.5 * (jax.scipy.special.digamma(dof) + math.log(2.0 / n))
    var = 0.25 * jax.scipy.special.polygamma(1, dof)
    return GaussianExponents(mean=mean, var_per_layer=var)
