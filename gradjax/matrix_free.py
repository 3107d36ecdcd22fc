"""Matrix-free spectral estimates of layer Jacobians, through ``jvp``/``vjp`` only.

A width-N layer Jacobian costs N Jacobian-vector products to materialise and O(N^3) to
decompose; the two numbers the chain-rule story needs cost far less:

* the mean squared singular value ``tr(J^T J) / n`` by Hutchinson's estimator,
  ``E||J v||^2 = tr(J^T J)`` for Rademacher ``v``: k probes cost k JVPs (one batched matmul),
  and the spread of the k single-probe estimates gives the standard error, which falls as
  ``1 / sqrt(k)``;
* the largest singular value by Lanczos on ``J^T J`` (one JVP and one VJP per step, full
  reorthogonalisation, Rayleigh-Ritz on the stored images): the top Ritz value ``theta``
  never exceeds ``sigma_max^2``, and the Ritz residual ``||J^T J x - theta x||`` bounds the
  distance from ``theta`` to an eigenvalue of ``J^T J``; that bound, mapped to sigma
  (``/ 2 sqrt(theta)``), is the stated error bar. (It bounds the distance to *an* eigenvalue:
  when the top of the spectrum is clustered the gap to the largest one can exceed it.)

The two estimators are written once, for any operator: :func:`hutchinson_trace` (a trace
from a quadratic form) and :func:`lanczos_top_eigenvalue` (a symmetric operator's largest
eigenvalue); the Jacobian estimates here and the Hessian estimates of
:mod:`gradjax.hessian` are both built on them. Every function is pure, takes an explicit key
and works under ``jit``/``vmap``; the probes plug into :func:`gradjax.sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradjax import layout
from gradjax.errors import check_int, invalid
from gradjax.lapack import after
from gradjax.models import Net, Params
from gradjax.probes import Probe
from gradjax.results import pytree_dataclass, static_field

MatVec = Callable[[jax.Array], jax.Array]


@pytree_dataclass
class TraceEstimate:
    """Hutchinson's estimate of the mean squared singular value ``tr(J^T J) / n``.

    Attributes:
      value: the estimate (mean over probes).
      stderr: its standard error (sample standard deviation over probes / sqrt(probes)).
      probes: number of probe vectors.
    """

    value: jax.Array
    stderr: jax.Array
    probes: int = static_field(default=0)


@pytree_dataclass
class TopSingularValue:
    """Lanczos estimate of the largest singular value.

    Attributes:
      value: ``sqrt(theta)``, theta the top Ritz value of ``J^T J`` (a lower bound on
        ``sigma_max^2``).
      error: the error bar on ``value``: the Ritz residual ``||J^T J x - theta x||`` (a bound
        on the distance from theta to an eigenvalue of ``J^T J``), mapped to sigma as
        ``residual / (2 value)``.
      steps: Lanczos steps.
    """

    value: jax.Array
    error: jax.Array
    steps: int = static_field(default=0)


@pytree_dataclass
class MatrixFreeSummary:
    """Matrix-free spectral summary of every layer Jacobian (layer axis first).

    Attributes:
      mean_sq: estimated mean squared singular value, ``(depth,)``.
      mean_sq_stderr: its standard error, ``(depth,)``.
      sigma_max: estimated largest singular value, ``(depth,)``.
      sigma_max_error: its error bar, ``(depth,)``.
    """

    mean_sq: jax.Array
    mean_sq_stderr: jax.Array
    sigma_max: jax.Array
    sigma_max_error: jax.Array


def _rademacher(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    return jax.random.rademacher(key, shape, jnp.int8).astype(dtype)


def hutchinson_trace(
    quadratic: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    *,
    in_shape: tuple[int, ...],
    dtype=jnp.float32,
    probes: int = 64,
) -> TraceEstimate:
    """Trace of a symmetric operator ``A`` given only its quadratic form ``v -> v^T A v``.

    Hutchinson's estimator: ``E[v^T A v] = tr(A)`` for Rademacher ``v``. Each probe's value is
    an independent unbiased estimate, so their spread gives the standard error.

    Args:
      quadratic: ``v -> v^T A v`` for one ``v`` of shape ``in_shape`` (it is vmapped).
      key: PRNG key for the Rademacher probes.
      in_shape: the shape of A's input.
      dtype: floating dtype of the probes.
      probes: number of probes (>= 2, for the error bar).

    Returns:
      A :class:`TraceEstimate` of ``tr(A)``.
    """
    check_int("probes", probes, minimum=2)
    v = _rademacher(key, (probes, *in_shape), dtype)
    per_probe = jax.vmap(quadratic)(v)
    value = jnp.mean(per_probe)
    stderr = jnp.std(per_probe, ddof=1) / math.sqrt(probes)
    return TraceEstimate(value=value, stderr=stderr, probes=probes)


def hutchinson_mean_sq(
    matvec: MatVec,
    key: jax.Array,
    *,
    in_shape: tuple[int, ...],
    out_size: int,
    dtype=jnp.float32,
    probes: int = 64,
) -> TraceEstimate:
    """Mean squared singular value of a linear map given only ``v -> J v``.

    :func:`hutchinson_trace` of ``J^T J`` (``v^T J^T J v = ||J v||^2``), divided by the number
    of singular values.

    Args:
      matvec: the map ``J``, applied to one vector of shape ``in_shape`` (it is vmapped).
      key: PRNG key for the Rademacher probes.
      in_shape: the shape of J's input.
      out_size: the number of J's outputs (``n = min(in, out)`` singular values).
      dtype: floating dtype of the probes.
      probes: number of probes (>= 2, for the error bar).

    Returns:
      A :class:`TraceEstimate` of ``tr(J^T J) / min(in, out)``.

    Example:
      >>> import jax, jax.numpy as jnp, gradjax as gj
      >>> a = jax.random.normal(jax.random.key(0), (256, 256)) / 16.0
      >>> est = gj.matrix_free.hutchinson_mean_sq(
      ...     lambda v: a @ v, jax.random.key(1), in_shape=(256,), out_size=256, probes=128)
      >>> bool(abs(est.value - jnp.mean(a**2) * 256) < 4 * est.stderr)  # doctest: +SKIP
      True
    """
    n = min(math.prod(in_shape), int(out_size))
    return hutchinson_trace(
        lambda v: jnp.sum(matvec(v) ** 2) / n, key, in_shape=in_shape, dtype=dtype, probes=probes
    )


@pytree_dataclass
class TopEigenvalue:
    """Lanczos estimate of the largest eigenvalue of a symmetric operator.

    Attributes:
      value: the top Ritz value (a lower bound on the largest eigenvalue).
      error: the Ritz residual ``||A x - value x||``: a bound on the distance from ``value`` to
        an eigenvalue of ``A`` (to the largest one unless the top of the spectrum is clustered).
      steps: Lanczos steps.
    """

    value: jax.Array
    error: jax.Array
    steps: int = static_field(default=0)


def lanczos_top_eigenvalue(
    operator: MatVec, key: jax.Array, *, size: int, dtype=jnp.float32, steps: int = 32
) -> TopEigenvalue:
    """Largest eigenvalue of a symmetric operator by Lanczos with full reorthogonalisation.

    Args:
      operator: ``v -> A v`` on flat vectors of length ``size``; ``A`` symmetric (it may be
        indefinite: the algebraically largest eigenvalue is estimated).
      key: PRNG key for the start vector.
      size: the dimension of A.
      dtype: floating dtype.
      steps: Lanczos steps (capped at ``size``).

    Returns:
      A :class:`TopEigenvalue` with its residual-based error bar.
    """
    check_int("steps", steps, minimum=1)
    check_int("size", size, minimum=1)
    n = int(size)
    m = min(steps, n)
    v0 = jax.random.normal(key, (n,), dtype)
    v0 = v0 / jnp.linalg.norm(v0)
    eps = jnp.finfo(dtype).eps

    def step(j, carry):
        basis, images, scale = carry
        v = basis[j]
        w = operator(v)
        images = images.at[j].set(w)
        alpha = jnp.vdot(v, w)
        scale = jnp.maximum(scale, jnp.abs(alpha))
        # Two passes of Gram-Schmidt against the whole basis (rows beyond j are zero): plain
        # three-term Lanczos loses orthogonality once a Ritz value converges.
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        # An exhausted Krylov space (beta at round-off level) leaves the remaining rows zero:
        # they add Ritz values 0 for vectors outside the basis, so the top Ritz value is
        # taken over the basis rows only (see below).
        ok = beta > 1e3 * eps * scale
        nxt = jnp.where(ok, w / jnp.where(ok, beta, 1.0), 0.0)
        return basis.at[j + 1].set(nxt), images, scale

    basis = jnp.zeros((m + 1, n), dtype).at[0].set(v0)
    images = jnp.zeros((m, n), dtype)
    basis, images, _ = jax.lax.fori_loop(0, m, step, (basis, images, jnp.zeros((), dtype)))
    basis = basis[:m]
    # Rayleigh-Ritz with the stored images A v_j: H = V A V^T is exact whatever happened to
    # the three-term recurrence, and so is the residual ||A x - theta x|| of the top Ritz
    # pair, which bounds the distance from theta to an eigenvalue of A.
    h = basis @ images.T
    h = 0.5 * (h + h.T)
    # Zero rows of an exhausted basis give spurious Ritz values 0: push them below the
    # spectrum so that they never become the top one of an operator with negative eigenvalues.
    live = jnp.sum(basis**2, axis=1) > 0.5
    floor = -2.0 * (jnp.max(jnp.abs(h)) + 1.0)
    h = jnp.where(live[:, None] & live[None, :], h, 0.0) + jnp.diag(jnp.where(live, 0.0, floor))
    evals, evecs = jnp.linalg.eigh(h)
    s = evecs[:, -1]
    residual = jnp.linalg.norm(images.T @ s - evals[-1] * (basis.T @ s))
    return TopEigenvalue(value=evals[-1], error=residual, steps=m)


def lanczos_sigma_max(
    matvec: MatVec,
    rmatvec: MatVec,
    key: jax.Array,
    *,
    in_shape: tuple[int, ...],
    dtype=jnp.float32,
    steps: int = 32,
) -> TopSingularValue:
    """Largest singular value of ``J`` by :func:`lanczos_top_eigenvalue` on ``J^T J``.

    Args:
      matvec: ``v -> J v`` for ``v`` of shape ``in_shape``.
      rmatvec: ``u -> J^T u`` (returns shape ``in_shape``).
      key: PRNG key for the start vector.
      in_shape: the shape of J's input.
      dtype: floating dtype.
      steps: Lanczos steps (capped at the input size).

    Returns:
      A :class:`TopSingularValue` with its residual-based error bar.
    """
    op = lambda v: rmatvec(matvec(v.reshape(in_shape))).reshape(-1)
    top = lanczos_top_eigenvalue(op, key, size=math.prod(in_shape), dtype=dtype, steps=steps)
    value = jnp.sqrt(jnp.maximum(top.value, 0.0))
    error = top.error / (2.0 * jnp.maximum(value, jnp.finfo(dtype).tiny))
    return TopSingularValue(value=value, error=error, steps=top.steps)


def _block_fn(net: Net, layer: dict[str, jax.Array], residual: bool) -> Callable:
    return lambda a: net.block(layer, a, residual=residual)[2]


def _layer_estimate(f, a, key, probes: int, steps: int, dtype):
    out, jvp_fn = jax.linearize(f, a)
    vjp_fn = jax.linear_transpose(jvp_fn, a)
    k_trace, k_top = jax.random.split(key)
    trace = hutchinson_mean_sq(
        jvp_fn, k_trace, in_shape=a.shape, out_size=out.size, dtype=dtype, probes=probes
    )
    top = lanczos_sigma_max(
        jvp_fn, lambda u: vjp_fn(u)[0], k_top, in_shape=a.shape, dtype=dtype, steps=steps
    )
    return trace.value, trace.stderr, top.value, top.error


def layer_spectrum_estimates(
    net: Net,
    params: Params,
    x: jax.Array,
    *,
    key: jax.Array,
    probes: int = 64,
    lanczos_steps: int = 32,
) -> MatrixFreeSummary:
    """Mean squared and largest singular values of every layer Jacobian, matrix-free.

    The Jacobians are those of each block ``a_{l-1} -> a_l`` at the activations of input
    ``x`` (the matrices :func:`gradjax.layer_jacobians` materialises), reached only through
    ``jax.linearize`` (JVP) and its transpose (VJP).

    Args:
      net: the network.
      params: its parameters.
      x: one input ``(input_dim,)``, or a batch ``(batch, input_dim)`` whose batch map is
        used (needed with BatchNorm, which couples the batch; without it the batch map is
        block diagonal, so mean_sq is the batch average and sigma_max the batch maximum).
      key: PRNG key for the probes.
      probes: Hutchinson probes per layer.
      lanczos_steps: Lanczos steps per layer.

    Returns:
      A :class:`MatrixFreeSummary` with a ``(depth,)`` layer axis.

    Example:
      >>> import jax, gradjax as gj
      >>> net = gj.build(gj.NetConfig(depth=8, width=256, activation="tanh", sigma_w=1.2))
      >>> p = net.init(jax.random.key(0))
      >>> est = gj.layer_spectrum_estimates(net, p, jax.random.normal(jax.random.key(1), (256,)),
      ...                                   key=jax.random.key(2))
      >>> est.mean_sq.shape
      (8,)
    """
    net.check_input(x)
    check_int("probes", probes, minimum=2)
    check_int("lanczos_steps", lanczos_steps, minimum=1)
    if net.cfg.norm == "batch" and jnp.ndim(x) != 2:
        raise invalid("x.shape", jnp.shape(x), "(batch, input_dim): BatchNorm couples the batch")
    x = jnp.asarray(x, net.dtype)
    trace = net.forward(params, x)
    k_first, k_hidden = jax.random.split(key)
    first_block = _block_fn(net, layout.input_layer(params), False)
    first = _layer_estimate(first_block, x, k_first, probes, lanczos_steps, net.dtype)
    hidden_keys = jax.random.split(k_hidden, net.cfg.depth - 1)

    def one(layer, a_prev, k):
        return _layer_estimate(
            _block_fn(net, layer, True), a_prev, k, probes, lanczos_steps, net.dtype
        )

    # After the first block's estimate: each holds an eigh, and independent LAPACK calls can
    # deadlock (see gradjax.lapack).
    hidden = jax.vmap(one)(layout.hidden_layers(params), after(trace.act[:-1], first), hidden_keys)
    stack = [jnp.concatenate([f[None], h]) for f, h in zip(first, hidden, strict=True)]
    return MatrixFreeSummary(
        mean_sq=stack[0], mean_sq_stderr=stack[1], sigma_max=stack[2], sigma_max_error=stack[3]
    )


def matrix_free_probe(
    net: Net, *, probes: int = 64, lanczos_steps: int = 32, batch: int = 8
) -> Probe:
    """A sweep probe: :func:`layer_spectrum_estimates` at one N(0, 1) input.

    Args:
      net: the network.
      probes: Hutchinson probes per layer.
      lanczos_steps: Lanczos steps per layer.
      batch: inputs used only for BatchNorm networks (the batch map's Jacobians).

    Returns:
      A :class:`gradjax.probes.Probe` giving a ``MatrixFreeSummary``.
    """
    check_int("probes", probes, minimum=2)
    check_int("lanczos_steps", lanczos_steps, minimum=1)
    check_int("batch", batch, minimum=2)

    def per_network(params: Params, key: jax.Array) -> MatrixFreeSummary:
        kx, kp = jax.random.split(key)
        shape = (batch, net.cfg.input_dim) if net.cfg.norm == "batch" else (net.cfg.input_dim,)
        x = jax.random.normal(kx, shape, net.dtype)
        return layer_spectrum_estimates(
            net, params, x, key=kp, probes=probes, lanczos_steps=lanczos_steps
        )

    # Forward pass, JVPs and VJPs only: it works on lazily scaled parameters.
    return Probe(per_network=per_network, lazy_scales=True)


@pytree_dataclass
class EmpiricalChi1:
    """chi_1 measured on a network: the mean squared singular value of its layer Jacobians.

    Attributes:
      chi1: geometric mean of ``mean_sq`` over the layers from ``skip`` on (where the
        forward signal has reached its fixed point q*), the finite-width counterpart of
        mean-field chi_1.
      mean_sq: per-layer Hutchinson estimates, ``(depth,)``.
      stderr: their standard errors, ``(depth,)``.
      skip: layers left out at the start.
    """

    chi1: jax.Array
    mean_sq: jax.Array
    stderr: jax.Array
    skip: int = static_field(default=0)


def empirical_chi1(
    net: Net, params: Params, x: jax.Array, *, key: jax.Array, probes: int = 8, skip: int = -1
) -> EmpiricalChi1:
    """Measures chi_1 on one network by Hutchinson estimates of every layer Jacobian.

    Args:
      net: a network without BatchNorm.
      params: its parameters.
      x: one input, ``(input_dim,)``.
      key: PRNG key for the probes.
      probes: Hutchinson probes per layer.
      skip: leading layers to leave out of the average (default ``depth // 4``; the first
        layers still carry the input's own variance).

    Returns:
      An :class:`EmpiricalChi1`.
    """
    check_int("probes", probes, minimum=2)
    depth = net.cfg.depth
    skip = depth // 4 if skip == -1 else skip
    check_int("skip", skip, minimum=0, maximum=depth - 1)
    if net.cfg.norm == "batch":
        raise invalid("norm", "batch", "None or 'layer' (per-example Jacobians)")
    if jnp.ndim(x) != 1:
        raise invalid("x.shape", jnp.shape(x), f"({net.cfg.input_dim},), one example")
    net.check_input(x)
    x = jnp.asarray(x, net.dtype)
    trace = net.forward(params, x)
    k_first, k_hidden = jax.random.split(key)

    def one(f, a, k):
        out, jvp_fn = jax.linearize(f, a)
        est = hutchinson_mean_sq(
            jvp_fn, k, in_shape=a.shape, out_size=out.size, dtype=net.dtype, probes=probes
        )
        return est.value, est.stderr

    keys = jax.random.split(k_hidden, depth - 1)
    hid_v, hid_e = jax.vmap(lambda layer, a, k: one(_block_fn(net, layer, True), a, k))(
        layout.hidden_layers(params), trace.act[:-1], keys
    )
    first_v, first_e = one(_block_fn(net, layout.input_layer(params), False), x, k_first)
    mean_sq = jnp.concatenate([first_v[None], hid_v])
    stderr = jnp.concatenate([first_e[None], hid_e])
    logs = jnp.log(mean_sq[skip:])
    return EmpiricalChi1(chi1=jnp.exp(jnp.mean(logs)), mean_sq=mean_sq, stderr=stderr, skip=skip)


def chi1_probe(net: Net, *, probes: int = 8, skip: int = -1) -> Probe:
    """A sweep probe: :func:`empirical_chi1` at one N(0, 1) input.

    Args:
      net: a network without BatchNorm.
      probes: Hutchinson probes per layer.
      skip: leading layers left out (default ``depth // 4``).

    Returns:
      A :class:`gradjax.probes.Probe` giving an ``EmpiricalChi1``.
    """
    check_int("probes", probes, minimum=2)

    def per_network(params: Params, key: jax.Array) -> EmpiricalChi1:
        kx, kp = jax.random.split(key)
        x = jax.random.normal(kx, (net.cfg.input_dim,), net.dtype)
        return empirical_chi1(net, params, x, key=kp, probes=probes, skip=skip)

    # Forward pass and JVPs only: it works on lazily scaled parameters.
    return Probe(per_network=per_network, lazy_scales=True)
