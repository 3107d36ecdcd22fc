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
eigenvalue: :func:`lanczos_basis`, then :func:`ritz_top_eigenvalue`, which solves the small
eigenproblems of many bases in one call); the Jacobian estimates here and the Hessian
estimates of :mod:`gradjax.measure.hessian` are both built on them. Every function is pure, takes an
explicit key and works under ``jit``/``vmap``; the probes plug into :func:`gradjax.sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradjax.measure.probes import Probe
from gradjax.nets import layout
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import check_int, invalid
from gradjax.utils.lapack import on_cpu
from gradjax.utils.pytree import pytree_dataclass, static_field

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
      quadratic: ``v -> v^T A v`` for one ``v`` of shape ``in_shape`` (it is vmapped); it
        may return an array (one quadratic form per diagonal block of ``A``), each then
        estimated on its own.
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
    value = jnp.mean(per_probe, axis=0)
    stderr = jnp.std(per_probe, axis=0, ddof=1) / math.sqrt(probes)
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


@pytree_dataclass
class KrylovBasis:
    """An orthonormal Krylov basis of a symmetric operator and its images, before Ritz values.

    Attributes:
      basis: ``(steps, size)`` orthonormal rows ``v_j`` (rows of an exhausted space are 0).
      images: ``(steps, size)`` the operator applied to each row, ``A v_j``.
    """

    basis: jax.Array
    images: jax.Array


def lanczos_basis(
    operator: MatVec,
    key: jax.Array,
    *,
    size: int,
    dtype=jnp.float32,
    steps: int = 32,
    groups: int | None = None,
) -> KrylovBasis:
    """Lanczos with full reorthogonalisation: the Krylov basis, without the eigenproblem.

    Kept apart from :func:`ritz_top_eigenvalue` so that several bases (of different sizes,
    e.g. a network's input layer and its hidden layers) can share one small eigensolver call.

    With ``groups``, the operator is block-diagonal over a leading group axis (a batch whose
    examples do not mix): ``groups`` independent recurrences run in one, each applying the
    operator once per step between them.

    Args:
      operator: ``v -> A v`` on flat vectors of length ``size`` (with ``groups``: on
        ``(groups, size)`` arrays, each row mapped by its own block); ``A`` symmetric.
      key: PRNG key for the start vector.
      size: the dimension of A (of one block, with ``groups``).
      dtype: floating dtype.
      steps: Lanczos steps (capped at ``size``).
      groups: the number of diagonal blocks, or ``None`` for one operator.

    Returns:
      A :class:`KrylovBasis` (with ``groups``, each array has the group axis first).
    """
    check_int("steps", steps, minimum=1)
    check_int("size", size, minimum=1)
    if groups is not None:
        check_int("groups", groups, minimum=1)
    n, g = int(size), 1 if groups is None else int(groups)
    m = min(steps, n)
    v0 = jax.random.normal(key, (g, n), dtype)
    v0 = v0 / jnp.linalg.norm(v0, axis=1, keepdims=True)
    eps = jnp.finfo(dtype).eps
    apply = (lambda v: operator(v[0])[None]) if groups is None else operator

    def step(j, carry):
        basis, images, scale = carry  # (m + 1, g, n), (m, g, n), (g,)
        v = basis[j]
        w = apply(v)
        images = images.at[j].set(w)
        alpha = jnp.sum(v * w, axis=1)
        scale = jnp.maximum(scale, jnp.abs(alpha))
        # Two passes of Gram-Schmidt against the whole basis (rows beyond j are zero): plain
        # three-term Lanczos loses orthogonality once a Ritz value converges.
        for _ in range(2):
            w = w - jnp.einsum("mgn,mg->gn", basis, jnp.einsum("mgn,gn->mg", basis, w))
        beta = jnp.linalg.norm(w, axis=1)
        # An exhausted Krylov space (beta at round-off level) leaves the remaining rows zero;
        # ritz_top_eigenvalue keeps their spurious Ritz values below the spectrum.
        ok = beta > 1e3 * eps * scale
        nxt = jnp.where(ok[:, None], w / jnp.where(ok, beta, 1.0)[:, None], 0.0)
        return basis.at[j + 1].set(nxt), images, scale

    basis = jnp.zeros((m + 1, g, n), dtype).at[0].set(v0)
    images = jnp.zeros((m, g, n), dtype)
    basis, images, _ = jax.lax.fori_loop(0, m, step, (basis, images, jnp.zeros((g,), dtype)))
    basis, images = jnp.swapaxes(basis[:m], 0, 1), jnp.swapaxes(images, 0, 1)
    if groups is None:
        return KrylovBasis(basis=basis[0], images=images[0])
    return KrylovBasis(basis=basis, images=images)


def _rayleigh_matrix(krylov: KrylovBasis) -> jax.Array:
    """``H = V A V^T`` from the stored images (exact whatever the recurrence did)."""
    basis = krylov.basis
    h = basis @ krylov.images.T
    h = 0.5 * (h + h.T)
    # Zero rows of an exhausted basis give spurious Ritz values 0: push them below the
    # spectrum so that they never become the top one of an operator with negative eigenvalues.
    live = jnp.sum(basis**2, axis=1) > 0.5
    floor = -2.0 * (jnp.max(jnp.abs(h)) + 1.0)
    return jnp.where(live[:, None] & live[None, :], h, 0.0) + jnp.diag(jnp.where(live, 0.0, floor))


def _top_pair(krylov: KrylovBasis, evals: jax.Array, evecs: jax.Array) -> TopEigenvalue:
    s = evecs[:, -1]
    residual = jnp.linalg.norm(krylov.images.T @ s - evals[-1] * (krylov.basis.T @ s))
    return TopEigenvalue(value=evals[-1], error=residual, steps=krylov.basis.shape[0])


def ritz_top_eigenvalue(*bases: KrylovBasis) -> tuple[TopEigenvalue, ...]:
    """The top Ritz pair of each Krylov basis, with one batched eigensolver call for all.

    Rayleigh-Ritz on ``H = V A V^T``: the top Ritz value never exceeds the largest
    eigenvalue, and the residual ``||A x - theta x||`` of its Ritz vector bounds the distance
    from theta to an eigenvalue of A. One call, not one per basis: independent LAPACK calls
    in one CPU program must not run at the same time (see :mod:`gradjax.utils.lapack`).

    Args:
      *bases: :class:`KrylovBasis` values; each may carry leading batch axes (from
        ``vmap``), and their vector sizes and step counts may differ.

    Returns:
      One :class:`TopEigenvalue` per basis, with the basis' batch axes.
    """
    if not bases:
        raise invalid("bases", (), "at least one KrylovBasis")
    size = max(b.basis.shape[-2] for b in bases)
    hs = []
    for b in bases:
        lead, m = b.basis.shape[:-2], b.basis.shape[-2]
        rayleigh = _rayleigh_matrix
        for _ in lead:
            rayleigh = jax.vmap(rayleigh)
        h = rayleigh(b).reshape(-1, m, m)
        if m < size:
            # A shorter basis (a Krylov space capped by a smaller operator) is padded with
            # diagonal entries below its spectrum: its top Ritz pair is unchanged.
            floor = -2.0 * (jnp.max(jnp.abs(h), axis=(1, 2)) + 1.0)
            h = jnp.pad(h, ((0, 0), (0, size - m), (0, size - m)))
            padded = jnp.diag(jnp.arange(size) >= m).astype(h.dtype)
            h = h + floor[:, None, None] * padded
        hs.append(h)
    evals, evecs = jnp.linalg.eigh(jnp.concatenate(hs))
    out, at = [], 0
    for b, h in zip(bases, hs, strict=True):
        lead, m = b.basis.shape[:-2], b.basis.shape[-2]
        count = h.shape[0]
        e = evals[at : at + count].reshape(*lead, size)
        v = evecs[at : at + count, :m].reshape(*lead, m, size)
        at += count
        pair = _top_pair
        for _ in lead:
            pair = jax.vmap(pair)
        out.append(pair(b, e, v))
    return tuple(out)


def lanczos_top_eigenvalue(
    operator: MatVec, key: jax.Array, *, size: int, dtype=jnp.float32, steps: int = 32
) -> TopEigenvalue:
    """Largest eigenvalue of a symmetric operator by Lanczos with full reorthogonalisation.

    :func:`lanczos_basis` followed by :func:`ritz_top_eigenvalue`.

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
    krylov = lanczos_basis(operator, key, size=size, dtype=dtype, steps=steps)
    (top,) = ritz_top_eigenvalue(krylov)
    return top


def _gram_operator(matvec: MatVec, rmatvec: MatVec, in_shape: tuple[int, ...]) -> MatVec:
    """``v -> J^T J v`` on flat vectors."""
    return lambda v: rmatvec(matvec(v.reshape(in_shape))).reshape(-1)


def _sigma_from_eigenvalue(top: TopEigenvalue, dtype) -> TopSingularValue:
    """Maps ``J^T J``'s top Ritz value and its residual bound to sigma (``sqrt``, ``/ 2 sigma``)."""
    value = jnp.sqrt(jnp.maximum(top.value, 0.0))
    error = top.error / (2.0 * jnp.maximum(value, jnp.finfo(dtype).tiny))
    return TopSingularValue(value=value, error=error, steps=top.steps)


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
    op = _gram_operator(matvec, rmatvec, in_shape)
    top = lanczos_top_eigenvalue(op, key, size=math.prod(in_shape), dtype=dtype, steps=steps)
    return _sigma_from_eigenvalue(top, dtype)


def _block_fn(net: Net, layer: dict[str, jax.Array], residual: bool) -> Callable:
    return lambda a: net.block(layer, a, residual=residual)[2]


def _layer_estimate(f, a, key, probes: int, steps: int, dtype) -> tuple[TraceEstimate, KrylovBasis]:
    """Hutchinson's mean squared singular value and the Lanczos basis of ``J^T J`` of ``f``."""
    out, jvp_fn = jax.linearize(f, a)
    vjp_fn = jax.linear_transpose(jvp_fn, a)
    rmatvec = lambda u: vjp_fn(u)[0]
    k_trace, k_top = jax.random.split(key)
    trace = hutchinson_mean_sq(
        jvp_fn, k_trace, in_shape=a.shape, out_size=out.size, dtype=dtype, probes=probes
    )
    krylov = lanczos_basis(
        _gram_operator(jvp_fn, rmatvec, a.shape), k_top, size=a.size, dtype=dtype, steps=steps
    )
    return trace, krylov


def _over_layers(fn: Callable, *stacked: Any) -> Any:
    """``fn`` over the leading (layer) axis of ``stacked``: in turn on a CPU, batched elsewhere.

    Every estimate reads its layer's weights once per Lanczos step, twice over (JVP and VJP).
    On a CPU, one layer at a time keeps those weights in cache from step to step (a width-1024
    float32 layer is 4 MiB), where a batch over all layers streams every layer's weights from
    memory at each step (the benchmark ``matrix_free`` measures the difference). An
    accelerator wants the batch.
    """
    if on_cpu():
        return jax.lax.map(lambda args: fn(*args), stacked)
    return jax.vmap(fn)(*stacked)


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
    first_trace, first_krylov = _layer_estimate(
        first_block, x, k_first, probes, lanczos_steps, net.dtype
    )

    def one(layer, a_prev, k):
        return _layer_estimate(
            _block_fn(net, layer, True), a_prev, k, probes, lanczos_steps, net.dtype
        )

    hidden_keys = jax.random.split(k_hidden, net.cfg.depth - 1)
    hidden_trace, hidden_krylov = _over_layers(
        one, layout.hidden_layers(params), trace.act[:-1], hidden_keys
    )
    # The Krylov loops hold no LAPACK call, so the input layer's and the hidden layers' run
    # side by side; their Ritz values come from one eigensolver call.
    first_top, hidden_top = ritz_top_eigenvalue(first_krylov, hidden_krylov)
    first_sigma = _sigma_from_eigenvalue(first_top, net.dtype)
    hidden_sigma = _sigma_from_eigenvalue(hidden_top, net.dtype)
    stack = lambda f, h: jnp.concatenate([f[None], h])
    return MatrixFreeSummary(
        mean_sq=stack(first_trace.value, hidden_trace.value),
        mean_sq_stderr=stack(first_trace.stderr, hidden_trace.stderr),
        sigma_max=stack(first_sigma.value, hidden_sigma.value),
        sigma_max_error=stack(first_sigma.error, hidden_sigma.error),
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
      A :class:`gradjax.measure.probes.Probe` giving a ``MatrixFreeSummary``.
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
      A :class:`gradjax.measure.probes.Probe` giving an ``EmpiricalChi1``.
    """
    check_int("probes", probes, minimum=2)

    def per_network(params: Params, key: jax.Array) -> EmpiricalChi1:
        kx, kp = jax.random.split(key)
        x = jax.random.normal(kx, (net.cfg.input_dim,), net.dtype)
        return empirical_chi1(net, params, x, key=kp, probes=probes, skip=skip)

    # Forward pass and JVPs only: it works on lazily scaled parameters.
    return Probe(per_network=per_network, lazy_scales=True)
