"""Mean-field theory of signal and gradient propagation, by Hermite quadrature in JAX.

Conventions are those of Poole et al. (2016) and Schoenholz et al. (2017): a network of width
N -> infinity with ``W_ij ~ N(0, sigma_w^2 / N)`` and ``b_i ~ N(0, sigma_b^2)``; pre-activations
``z`` of layer l are Gaussian with variance ``q^l``. With ``z ~ N(0, 1)``:

* length map:       ``q^{l+1} = sigma_w^2 E[phi(sqrt(q^l) z)^2] + sigma_b^2``, fixed point q*;
* gradient factor:  ``chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]``: the mean squared singular value
  of a layer Jacobian ``diag(phi'(z)) W``, so ``E||dL/da_l||^2`` grows as ``chi_1^(L-l)``;
* correlation map:  ``c^{l+1} = (sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q*`` with
  ``(u_1, u_2)`` Gaussian of variance q* and correlation ``c^l``; stable fixed point c*;
* depth scales:     ``xi_q = -1 / ln(dq^{l+1}/dq^l at q*)``, ``xi_c = -1 / ln chi_c`` with
  ``chi_c = sigma_w^2 E[phi'(u_1) phi'(u_2)]`` at c*, and ``xi_grad = -1 / ln chi_1``
  (negative when gradients grow: they e-fold every ``|xi_grad|`` layers).

Gaussian expectations use Hermite-weighted rules: one-dimensional ones the equally spaced
Hermite rule of :func:`normal_rule` (Gauss-Hermite nodes are too sparse near 0 to resolve
``phi'(sqrt(q) z)`` at the large q* of saturating activations near their critical point),
two-dimensional ones (the correlation map) a tensor Gauss-Hermite rule (:func:`gauss_hermite`).

The critical line ``chi_1 = 1`` separates the ordered phase (gradients vanish) from the chaotic
one (gradients explode). Everything here is a pure JAX function of ``(sigma_w2, sigma_b2)`` that
``jit`` and ``vmap`` accept (the activation is static), float64 when ``jax_enable_x64`` is on.
Fixed points are found by iteration accelerated with safeguarded Newton steps; each result says
whether it converged, after how many iterations and with what residual, so a fixed point that
does not exist (ReLU with ``sigma_w^2 > 2``: q grows without bound) is reported as such.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.polynomial.hermite_e import hermegauss

from gradjax.activations import Activation, ActivationLike, derivative, get_activation
from gradjax.errors import GradjaxInputError, check_int, check_real, invalid
from gradjax.results import pytree_dataclass

DEFAULT_ORDER = 2048
"""Nodes of the one-dimensional rule (even: symmetric, no node at the kink z = 0, so ReLU-type
activations are integrated exactly by symmetry)."""

DEFAULT_ORDER_2D = 64
"""Gauss-Hermite nodes per dimension for the two-dimensional expectations of the c-map."""

Z_MAX = 10.0
"""Half-width of the one-dimensional rule in z (the normal mass beyond is below 1e-22)."""

Q_CAP = 1e30
"""The q iteration stops, unconverged, once q passes this (no finite fixed point)."""

_Q_FLOOR = 1e-30  # q below this is evaluated as the q -> 0+ limit (see _mean_field_point)

SIGMA_W2_RANGE = (1e-2, 1e4)
"""The sigma_w^2 range searched for the critical point (log-spaced scan, then bisection)."""


# --------------------------------------------------------------------------- quadrature


@functools.lru_cache(maxsize=16)
def normal_rule(order: int = DEFAULT_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``E[f(z)]``, ``z ~ N(0, 1)``: Gauss-Hermite in the form that
    stays accurate when ``f(z) = g(sqrt(q) z)`` is sharp.

    Gauss-Hermite nodes of order n are about ``pi / sqrt(2 n)`` apart near 0, so they cannot
    resolve ``phi'(sqrt(q) z)^2`` once ``sqrt(q)`` is large: sigmoid's critical point sits at
    q* ~ 47, where 128 Gauss-Hermite nodes put the critical sigma_w^2 at 106.7 instead of 103.
    This rule is the equally spaced (midpoint) Hermite rule on ``[-Z_MAX, Z_MAX]``, weights
    ``exp(-z^2/2)`` normalised to sum to 1: for an integrand analytic in a strip of half-width
    d its error falls as ``exp(-2 pi d / h)`` (h the spacing), so 2048 nodes stay at float64
    round-off up to q ~ 1e3 for tanh/sigmoid/erf, and kinks at 0 fall on a cell boundary.

    Args:
      order: number of nodes, an even integer >= 2.

    Returns:
      ``(nodes, weights)`` as float64 NumPy arrays; the weights sum to 1.
    """
    check_int("order", order, minimum=2, maximum=1_000_000)
    if order % 2:
        raise invalid("order", order, "an even integer >= 2 (no node at the kink z=0)")
    h = 2.0 * Z_MAX / order
    nodes = -Z_MAX + h * (np.arange(order) + 0.5)
    weights = np.exp(-0.5 * nodes**2)
    return nodes, weights / weights.sum()


@functools.lru_cache(maxsize=16)
def gauss_hermite(order: int = DEFAULT_ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``E[f(z)]``, ``z ~ N(0, 1)`` (probabilists' Gauss-Hermite).

    Args:
      order: number of nodes, an even integer >= 2.

    Returns:
      ``(nodes, weights)`` as float64 NumPy arrays; the weights sum to 1.
    """
    check_int("order", order, minimum=2, maximum=400)
    if order % 2:
        raise invalid("order", order, "an even integer in [2, 400] (no node at the kink z=0)")
    nodes, weights = hermegauss(order)
    return nodes, weights / weights.sum()


def _float_dtype() -> jnp.dtype:
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def _rule(order: int, dtype) -> tuple[jax.Array, jax.Array]:
    nodes, weights = normal_rule(order)
    return jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)


def _rule_2d(order: int, dtype) -> tuple[jax.Array, jax.Array]:
    nodes, weights = gauss_hermite(order)
    return jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)


def gaussian_expectation(
    f: Callable[[jax.Array], jax.Array], q: jax.Array, *, order: int = DEFAULT_ORDER
) -> jax.Array:
    """``E[f(sqrt(q) z)]`` for ``z ~ N(0, 1)``, by the quadrature of :func:`normal_rule`.

    Args:
      f: an elementwise function.
      q: the variance (a scalar; ``vmap`` for grids).
      order: number of nodes (even).

    Returns:
      The expectation, a scalar of ``q``'s dtype.

    Example:
      >>> import jax.numpy as jnp, gradjax as gj
      >>> float(gj.theory.gaussian_expectation(lambda u: u**2, jnp.float32(2.0)))  # doctest: +SKIP
      2.0
    """
    q = jnp.asarray(q)
    if not jnp.issubdtype(q.dtype, jnp.floating):
        q = q.astype(_float_dtype())
    nodes, weights = _rule(order, q.dtype)
    return jnp.sum(weights * f(jnp.sqrt(q) * nodes))


def _pair_expectation(
    f: Callable[[jax.Array, jax.Array], jax.Array], q: jax.Array, c: jax.Array, order: int
) -> jax.Array:
    """``E[f(u_1, u_2)]`` with ``u_1, u_2 ~ N(0, q)`` of correlation c (tensor Gauss-Hermite)."""
    nodes, weights = _rule_2d(order, q.dtype)
    z1, z2 = nodes[:, None], nodes[None, :]
    w = weights[:, None] * weights[None, :]
    s = jnp.sqrt(q)
    # sqrt(1 - c^2) written so c = 1 gives 0 exactly (and a finite derivative is never needed:
    # the slope of the map comes from Price's theorem, below).
    u1 = s * z1
    u2 = s * (c * z1 + jnp.sqrt(jnp.maximum(1.0 - c * c, 0.0)) * z2)
    return jnp.sum(w * f(u1, u2))


# --------------------------------------------------------------------------- activations


_VALIDATED: set[Activation] = set()


def _checked(activation: ActivationLike) -> Activation:
    """The activation, checked once to be elementwise, finite and differentiable."""
    if isinstance(activation, Activation) and activation in _VALIDATED:
        # Already checked: inner functions re-enter here while tracing (under vmap the
        # check itself could not run eagerly).
        return activation
    try:
        return _checked_cached(activation)
    except TypeError as err:  # an unhashable callable: check it without the cache
        if "unhashable" not in str(err):
            raise
        return _check_activation(activation)


@functools.lru_cache(maxsize=128)
def _checked_cached(activation: ActivationLike) -> Activation:
    act = _check_activation(activation)
    _VALIDATED.add(act)
    return act


def _check_activation(activation: ActivationLike) -> Activation:
    act = get_activation(activation)
    points = np.linspace(-3.0, 3.0, 13, dtype=np.float32)
    try:
        with jax.ensure_compile_time_eval():
            x = jnp.asarray(points)
            y = act.fn(x)
            dy = derivative(act)(x)
            y, dy = np.asarray(y), np.asarray(dy)
    except Exception as err:  # any failure to trace or differentiate is the user's function
        raise GradjaxInputError(
            f"activation={act.name!r} is invalid: expected an elementwise function that JAX "
            f"can differentiate (evaluating phi' failed with {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if y.shape != points.shape or dy.shape != points.shape:
        raise invalid(
            "activation",
            act.name,
            f"an elementwise function (shape {points.shape} in, {y.shape} out)",
        )
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(dy))):
        raise invalid("activation", act.name, "a function with finite values and derivative")
    if not np.any(dy != 0):
        raise invalid(
            "activation",
            act.name,
            "a function with a non-zero derivative (phi' is 0 everywhere on [-3, 3], e.g. a "
            "step or rounding function: no gradient can pass through it)",
        )
    return act


def _second_derivative(act: Activation) -> Callable[[jax.Array], jax.Array]:
    return derivative(derivative(act))


# --------------------------------------------------------------------------- maps


def _as_float(x, dtype) -> jax.Array:
    return jnp.asarray(x, dtype)


def q_map(
    q: jax.Array,
    *,
    activation: ActivationLike,
    sigma_w2: jax.Array,
    sigma_b2: jax.Array,
    order: int = DEFAULT_ORDER,
) -> jax.Array:
    """The length map ``q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2``.

    Args:
      q: pre-activation variance of the previous layer.
      activation: a name or an elementwise callable.
      sigma_w2: weight variance sigma_w^2 (times 1/N per entry).
      sigma_b2: bias variance.
      order: nodes of the 1-D rule (see :func:`normal_rule`).

    Returns:
      The next layer's variance.
    """
    act = _checked(activation)
    q = jnp.asarray(q)
    dtype = q.dtype if jnp.issubdtype(q.dtype, jnp.floating) else _float_dtype()
    q = q.astype(dtype)
    second = gaussian_expectation(lambda u: act.fn(u) ** 2, q, order=order)
    return _as_float(sigma_w2, dtype) * second + _as_float(sigma_b2, dtype)


def _q_slope(act: Activation, q, sigma_w2, order: int):
    # Price's theorem: d/dq E[g(u)] = E[g''(u)] / 2 for u ~ N(0, q); with g = phi^2 this is
    # E[phi'^2 + phi phi''], finite at q = 0 (where d/dq of sqrt(q) is not).
    d1, d2 = derivative(act), _second_derivative(act)
    e = gaussian_expectation(lambda u: d1(u) ** 2 + act.fn(u) * d2(u), q, order=order)
    return sigma_w2 * e


def gradient_factor(
    q: jax.Array, *, activation: ActivationLike, sigma_w2: jax.Array, order: int = DEFAULT_ORDER
) -> jax.Array:
    """``sigma_w^2 E[phi'(sqrt(q) z)^2]``: chi_1 when evaluated at ``q = q*``.

    Args:
      q: pre-activation variance.
      activation: a name or an elementwise callable.
      sigma_w2: weight variance.
      order: nodes of the 1-D rule (see :func:`normal_rule`).

    Returns:
      The mean squared singular value of a layer Jacobian at variance q.
    """
    act = _checked(activation)
    q = jnp.asarray(q)
    d1 = derivative(act)
    return jnp.asarray(sigma_w2, q.dtype) * gaussian_expectation(
        lambda u: d1(u) ** 2, q, order=order
    )


def c_map(
    c: jax.Array,
    *,
    activation: ActivationLike,
    q: jax.Array,
    sigma_w2: jax.Array,
    sigma_b2: jax.Array,
    order: int = DEFAULT_ORDER_2D,
) -> jax.Array:
    """The correlation map at variance q (normally q*).

    Args:
      c: the correlation of two inputs' pre-activations, in [-1, 1].
      activation: a name or an elementwise callable.
      q: the (common) pre-activation variance.
      sigma_w2: weight variance.
      sigma_b2: bias variance.
      order: Gauss-Hermite nodes per dimension.

    Returns:
      ``(sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q_2``, where ``q_2`` is the same
      numerator at ``c = 1`` (equal to q at the fixed point q*): normalising by the 2-D rule's
      own value keeps ``c = 1`` an exact fixed point, whatever the rule's error at large q.
    """
    act = _checked(activation)
    q = jnp.asarray(q)
    c = jnp.asarray(c, q.dtype)
    sw2, sb2 = jnp.asarray(sigma_w2, q.dtype), jnp.asarray(sigma_b2, q.dtype)
    prod = lambda a, b: act.fn(a) * act.fn(b)
    cross = sw2 * _pair_expectation(prod, q, c, order) + sb2
    same = sw2 * _pair_expectation(prod, q, jnp.ones_like(c), order) + sb2
    return cross / same


def _c_slope(act: Activation, q, c, sigma_w2, order: int):
    # Price's theorem again: d/dc E[phi(u1) phi(u2)] = q E[phi'(u1) phi'(u2)], so the slope of
    # the normalised map is sigma_w^2 E[phi'(u1) phi'(u2)] (= chi_1 at c = 1).
    d1 = derivative(act)
    return sigma_w2 * _pair_expectation(lambda a, b: d1(a) * d1(b), q, c, order)


# --------------------------------------------------------------------------- fixed points


@pytree_dataclass
class FixedPoint:
    """A fixed point found by (Newton-accelerated) iteration, with its convergence record.

    Attributes:
      value: where the iteration stopped (the fixed point when ``converged``).
      converged: whether ``|map(value) - value| <= atol + rtol |value|``.
      iterations: iterations used.
      residual: ``map(value) - value`` where it stopped.
    """

    value: jax.Array
    converged: jax.Array
    iterations: jax.Array
    residual: jax.Array


def _tolerances(dtype) -> tuple[float, float]:
    if jnp.dtype(dtype) == jnp.float64:
        return 1e-11, 1e-30
    return 2e-6, 1e-20


def _solve_fixed_point(
    fmap: Callable[[jax.Array], jax.Array],
    slope: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    *,
    lower: float,
    upper: float,
    cap: float,
    max_iter: int,
) -> FixedPoint:
    """Finds a stable fixed point of ``fmap`` on ``[lower, upper]``.

    Each step is a Newton step on ``fmap(x) - x`` when the map's slope is below 1 (so Newton
    heads for a stable fixed point, not an unstable one) and the step lowers the residual;
    otherwise a plain iteration ``x <- fmap(x)``, which converges to the stable fixed point
    the network itself reaches layer after layer. Stops unconverged at ``max_iter`` or once
    ``x >= cap`` (divergence).
    """
    rtol, atol = _tolerances(x0.dtype)

    def resid(x):
        return fmap(x) - x

    def done(x, r):
        return jnp.abs(r) <= atol + rtol * jnp.abs(x)

    def cond(state):
        x, r, it = state
        return (it < max_iter) & ~done(x, r) & (x < cap) & jnp.isfinite(x)

    def body(state):
        x, r, it = state
        fx = x + r
        gp = slope(x) - 1.0
        safe_gp = jnp.where(gp < 0, gp, -1.0)
        newton = jnp.clip(x - r / safe_gp, lower, upper)
        r_newton = resid(newton)
        # Accept the Newton point if it stays on the same side of the fixed point with a
        # smaller residual, or crosses it with a much smaller one (the quadratic basin). A big
        # crossing can land next to another, unstable fixed point (the c-map's c = -1 or 1),
        # so it is refused and the plain iteration, monotone for these maps, is taken.
        same_side = jnp.sign(r_newton) == jnp.sign(r)
        better = jnp.where(
            same_side, jnp.abs(r_newton) < jnp.abs(r), jnp.abs(r_newton) < 0.25 * jnp.abs(r)
        )
        use_newton = (gp < -1e-6) & jnp.isfinite(r_newton) & better
        plain = jnp.clip(fx, lower, upper)
        x_new = jnp.where(use_newton, newton, plain)
        r_new = jnp.where(use_newton, r_newton, resid(plain))
        return x_new, r_new, it + 1

    x0 = jnp.clip(x0, lower, upper)
    x, r, it = jax.lax.while_loop(cond, body, (x0, resid(x0), jnp.zeros((), jnp.int32)))
    return FixedPoint(value=x, converged=done(x, r) & jnp.isfinite(x), iterations=it, residual=r)


def q_fixed_point(
    activation: ActivationLike,
    sigma_w2: jax.Array,
    sigma_b2: jax.Array,
    *,
    q0: float = 1.0,
    max_iter: int = 500,
    order: int = DEFAULT_ORDER,
) -> FixedPoint:
    """The fixed point q* of the length map, reached from ``q0`` as a deep network reaches it.

    Args:
      activation: a name or an elementwise callable.
      sigma_w2: weight variance (may be traced).
      sigma_b2: bias variance (may be traced).
      q0: the starting variance (an input of unit variance per coordinate gives about
        ``sigma_w^2 + sigma_b^2`` after one layer; any q0 > 0 reaches the same stable point).
      max_iter: iteration limit.
      order: nodes of the 1-D rule (see :func:`normal_rule`).

    Returns:
      A :class:`FixedPoint`; ``converged`` is False where none exists (e.g. ReLU with
      ``sigma_w^2 > 2``, where q grows past :data:`Q_CAP`) or the limit was hit.
    """
    act = _checked(activation)
    sw2, sb2 = _pair(sigma_w2, sigma_b2)
    fmap = lambda q: q_map(q, activation=act, sigma_w2=sw2, sigma_b2=sb2, order=order)
    slope = lambda q: _q_slope(act, q, sw2, order)
    return _solve_fixed_point(
        fmap,
        slope,
        jnp.asarray(q0, sw2.dtype),
        lower=0.0,
        upper=math.inf,
        cap=Q_CAP,
        max_iter=max_iter,
    )


def _pair(sigma_w2, sigma_b2) -> tuple[jax.Array, jax.Array]:
    _check_variance("sigma_w2", sigma_w2)
    _check_variance("sigma_b2", sigma_b2)
    dtype = _float_dtype()
    return jnp.asarray(sigma_w2, dtype), jnp.asarray(sigma_b2, dtype)


def _check_variance(field: str, value) -> None:
    """Checks a concrete variance (traced values are checked by their caller's grid)."""
    if isinstance(value, jax.core.Tracer):
        return
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        raise invalid(field, value, "a finite number >= 0 (got an empty array)")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        bad = arr[~(np.isfinite(arr) & (arr >= 0))].ravel()[0]
        raise invalid(field, float(bad), "a finite number >= 0 (a variance)")


# --------------------------------------------------------------------------- results


@pytree_dataclass
class MeanField:
    """Mean-field predictions at one or more ``(sigma_w^2, sigma_b^2)`` points.

    Attributes:
      sigma_w2: weight variance.
      sigma_b2: bias variance.
      q_star: fixed point of the length map (where the iteration stopped if not converged).
      chi1: ``sigma_w^2 E[phi'(sqrt(q*) z)^2]``, the per-layer gradient factor.
      q_slope: ``dq^{l+1}/dq^l`` at q* (its log gives xi_q).
      c_star: stable fixed point of the correlation map (NaN when q* = 0: signals vanish and
        correlations are undefined).
      chi_c: slope of the correlation map at c*.
      xi_q: ``-1 / ln q_slope`` (``inf`` at or past marginal stability).
      xi_c: ``-1 / ln chi_c`` (``inf`` on the critical line).
      xi_grad: ``-1 / ln chi_1``: positive when gradients vanish, negative when they explode,
        ``inf`` when ``chi_1 = 1``.
      q_converged: whether q* converged; ``q_iterations``, ``q_residual``: its record.
      c_converged: whether c* converged; ``c_iterations``, ``c_residual``: its record.
    """

    sigma_w2: jax.Array
    sigma_b2: jax.Array
    q_star: jax.Array
    chi1: jax.Array
    q_slope: jax.Array
    c_star: jax.Array
    chi_c: jax.Array
    xi_q: jax.Array
    xi_c: jax.Array
    xi_grad: jax.Array
    q_converged: jax.Array
    q_iterations: jax.Array
    q_residual: jax.Array
    c_converged: jax.Array
    c_iterations: jax.Array
    c_residual: jax.Array


def _depth_scale(slope: jax.Array) -> jax.Array:
    # -1/ln(slope) for a contracting map; infinite at (or numerically past) marginality.
    safe = jnp.where((slope > 0) & (slope < 1), slope, 0.5)
    return jnp.where((slope > 0) & (slope < 1), -1.0 / jnp.log(safe), jnp.inf)


def _gradient_depth_scale(chi1: jax.Array) -> jax.Array:
    safe = jnp.where((chi1 > 0) & (chi1 != 1), chi1, 0.5)
    xi = -1.0 / jnp.log(safe)
    return jnp.where(chi1 == 1, jnp.inf, jnp.where(chi1 > 0, xi, 0.0))


def _mean_field_point(act, sw2, sb2, order, order_2d, max_iter) -> MeanField:
    qfp = q_fixed_point(act, sw2, sb2, max_iter=max_iter, order=order)
    q = qfp.value
    # At q* = 0 (a dying signal) chi_1 and the slope are limits q -> 0+: evaluating at a tiny
    # positive q gives ReLU's 1/2 rather than relu'(0)^2 = 0.
    q_eval = jnp.maximum(q, _Q_FLOOR)
    chi1 = gradient_factor(q_eval, activation=act, sigma_w2=sw2, order=order)
    q_slope = _q_slope(act, q_eval, sw2, order)
    positive = q > 0
    q_safe = jnp.where(positive, q, 1.0)
    fmap = lambda c: c_map(c, activation=act, q=q_safe, sigma_w2=sw2, sigma_b2=sb2, order=order_2d)
    slope = lambda c: _c_slope(act, q_safe, c, sw2, order_2d)
    cfp = _solve_fixed_point(
        fmap,
        slope,
        jnp.asarray(0.5, q.dtype),
        lower=-1.0,
        upper=1.0,
        cap=math.inf,
        max_iter=max_iter,
    )
    c_star = jnp.where(positive, cfp.value, jnp.nan)
    # At c* = 1 the slope is chi_1 exactly (Price's theorem with u_1 = u_2); taking it from the
    # 1-D rule keeps xi_c = xi_grad in the ordered phase even where the 2-D rule is coarse.
    chi_c = jnp.where(cfp.value >= 1.0, chi1, slope(cfp.value))
    chi_c = jnp.where(positive, chi_c, jnp.nan)
    return MeanField(
        sigma_w2=sw2,
        sigma_b2=sb2,
        q_star=q,
        chi1=chi1,
        q_slope=q_slope,
        c_star=c_star,
        chi_c=chi_c,
        xi_q=_depth_scale(q_slope),
        xi_c=jnp.where(positive, _depth_scale(chi_c), jnp.nan),
        xi_grad=_gradient_depth_scale(chi1),
        q_converged=qfp.converged,
        q_iterations=qfp.iterations,
        q_residual=qfp.residual,
        c_converged=cfp.converged & positive,
        c_iterations=cfp.iterations,
        c_residual=cfp.residual,
    )


@functools.lru_cache(maxsize=64)
def _mean_field_fn(act: Activation, order: int, order_2d: int, max_iter: int, ndim: int):
    fn = lambda sw2, sb2: _mean_field_point(act, sw2, sb2, order, order_2d, max_iter)
    for _ in range(ndim):
        fn = jax.vmap(fn)
    return jax.jit(fn)


def mean_field(
    activation: ActivationLike,
    sigma_w2: float | jax.Array,
    sigma_b2: float | jax.Array,
    *,
    order: int = DEFAULT_ORDER,
    order_2d: int = DEFAULT_ORDER_2D,
    max_iter: int = 500,
) -> MeanField:
    """All mean-field predictions at ``(sigma_w^2, sigma_b^2)`` (broadcast, any shape).

    Jitted and vmapped internally (one compile per activation, settings and rank); inside
    a user's own ``jit``/``vmap`` it traces through as well.

    Args:
      activation: a name or an elementwise callable.
      sigma_w2: weight variance(s), finite and >= 0.
      sigma_b2: bias variance(s), finite and >= 0.
      order: nodes of the 1-D rule (even; see :func:`normal_rule`).
      order_2d: nodes per dimension for the correlation map (even).
      max_iter: fixed-point iteration limit.

    Returns:
      A :class:`MeanField` with the broadcast shape of the inputs.

    Raises:
      GradjaxInputError: for a negative or non-finite variance, an unknown or
        non-differentiable activation, or an odd quadrature order.

    Example:
      >>> import gradjax as gj
      >>> mf = gj.mean_field("tanh", 1.5, 0.05)
      >>> float(mf.chi1)  # doctest: +SKIP
      1.07...
    """
    act = _checked(activation)
    normal_rule(order), gauss_hermite(order_2d)
    check_int("max_iter", max_iter, minimum=1)
    sw2, sb2 = _pair(sigma_w2, sigma_b2)
    sw2, sb2 = jnp.broadcast_arrays(sw2, sb2)
    return _mean_field_fn(act, order, order_2d, max_iter, sw2.ndim)(sw2, sb2)


def mean_field_grid(
    activation: ActivationLike,
    sigma_w2: Sequence[float] | np.ndarray,
    sigma_b2: Sequence[float] | np.ndarray,
    **kwargs,
) -> MeanField:
    """:func:`mean_field` on the outer product grid ``sigma_w2 x sigma_b2``.

    Args:
      activation: a name or an elementwise callable.
      sigma_w2: 1-D grid of weight variances (non-empty, finite, >= 0).
      sigma_b2: 1-D grid of bias variances (non-empty, finite, >= 0).
      **kwargs: passed to :func:`mean_field`.

    Returns:
      A :class:`MeanField` of shape ``(len(sigma_w2), len(sigma_b2))``.
    """
    sw2 = _grid("sigma_w2", sigma_w2)
    sb2 = _grid("sigma_b2", sigma_b2)
    w, b = np.meshgrid(sw2, sb2, indexing="ij")
    return mean_field(activation, w, b, **kwargs)


def _grid(field: str, values) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if arr.ndim != 1 or arr.size == 0:
        raise invalid(field, values, "a non-empty 1-D grid of variances (zero points given)")
    _check_variance(field, arr)
    return arr


# --------------------------------------------------------------------------- critical line


@pytree_dataclass
class CriticalLine:
    """The critical line chi_1 = 1, one sigma_w^2 per sigma_b^2.

    Attributes:
      sigma_b2: the bias variances.
      sigma_w2: critical sigma_w^2 (NaN where there is none in the searched range).
      chi1_low: chi_1 at the low end of the searched sigma_w^2 range.
      chi1_high: chi_1 at the high end.
      found: whether a crossing was found.
    """

    sigma_b2: jax.Array
    sigma_w2: jax.Array
    chi1_low: jax.Array
    chi1_high: jax.Array
    found: jax.Array


@functools.lru_cache(maxsize=64)
def _critical_fn(act: Activation, lo: float, hi: float, scan: int, steps: int, order: int):
    def chi1_at(log_sw2, sb2):
        sw2 = jnp.exp(log_sw2)
        q = q_fixed_point(act, sw2, sb2, order=order).value
        q = jnp.maximum(q, _Q_FLOOR)  # the q -> 0+ limit, as in mean_field
        return gradient_factor(q, activation=act, sigma_w2=sw2, order=order)

    def one(sb2):
        dtype = sb2.dtype
        logs = jnp.linspace(math.log(lo), math.log(hi), scan, dtype=dtype)
        chi = jax.vmap(lambda s: chi1_at(s, sb2))(logs)
        above = chi >= 1.0
        idx = jnp.argmax(above)
        found = jnp.any(above) & (idx > 0)
        a, b = logs[jnp.maximum(idx - 1, 0)], logs[idx]

        # Bisection on the first upward crossing: the smallest sigma_w^2 with chi_1 = 1, so a
        # non-monotone chi_1 still gives the edge of the ordered phase.
        def bisect(_, ab):
            a, b = ab
            mid = 0.5 * (a + b)
            up = chi1_at(mid, sb2) >= 1.0
            return jnp.where(up, a, mid), jnp.where(up, mid, b)

        a, b = jax.lax.fori_loop(0, steps, bisect, (a, b))
        crit = jnp.where(found, jnp.exp(0.5 * (a + b)), jnp.nan)
        return CriticalLine(
            sigma_b2=sb2, sigma_w2=crit, chi1_low=chi[0], chi1_high=chi[-1], found=found
        )

    return jax.jit(jax.vmap(one))


def critical_line(
    activation: ActivationLike,
    sigma_b2: float | Sequence[float] | np.ndarray,
    *,
    sigma_w2_min: float = SIGMA_W2_RANGE[0],
    sigma_w2_max: float = SIGMA_W2_RANGE[1],
    scan: int = 64,
    order: int = DEFAULT_ORDER,
) -> CriticalLine:
    """The critical sigma_w^2 (chi_1 = 1) for each sigma_b^2, vectorised.

    A log-spaced scan of chi_1 over ``[sigma_w2_min, sigma_w2_max]`` brackets the first upward
    crossing, then 48 bisection steps (in log sigma_w^2) pin it down. Saturating activations
    with a small phi'(0) have their critical point at large sigma_w^2 (sigmoid: phi'(0) = 1/4,
    so sigma_w^2 > 16), which the default range covers.

    Args:
      activation: a name or an elementwise callable.
      sigma_b2: bias variance(s).
      sigma_w2_min: low end of the search (> 0).
      sigma_w2_max: high end of the search.
      scan: scan points.
      order: nodes of the 1-D rule (see :func:`normal_rule`).

    Returns:
      A :class:`CriticalLine` (NaN and ``found=False`` where no crossing is in range).
    """
    act = _checked(activation)
    sb2 = _grid("sigma_b2", sigma_b2)
    lo, hi = _search_range(sigma_w2_min, sigma_w2_max)
    check_int("scan", scan, minimum=2)
    normal_rule(order)
    with jax.ensure_compile_time_eval():
        return _critical_fn(act, lo, hi, scan, 48, order)(jnp.asarray(sb2, _float_dtype()))


def _search_range(lo, hi) -> tuple[float, float]:
    check_real("sigma_w2_min", lo, strictly_positive=True)
    check_real("sigma_w2_max", hi, strictly_positive=True)
    if not hi > lo:
        raise invalid("sigma_w2_max", hi, f"a number > sigma_w2_min={lo!r}")
    return float(lo), float(hi)


def critical_sigma_w2(
    activation: ActivationLike,
    sigma_b2: float,
    *,
    sigma_w2_min: float = SIGMA_W2_RANGE[0],
    sigma_w2_max: float = SIGMA_W2_RANGE[1],
) -> float:
    """The sigma_w^2 at which chi_1 = 1 for bias variance ``sigma_b2`` (the edge of chaos).

    Safe to call while tracing (the ``critical`` initialiser calls it inside a sweep's
    ``jit``): it computes eagerly and caches by its arguments.

    Args:
      activation: a name or an elementwise callable.
      sigma_b2: bias variance, finite and >= 0.
      sigma_w2_min: low end of the search range.
      sigma_w2_max: high end of the search range.

    Returns:
      The critical sigma_w^2 as a Python float.

    Raises:
      GradjaxInputError: for bad input, or when chi_1 does not cross 1 in the range (the
        message gives chi_1 at both ends).

    Example:
      >>> import gradjax as gj
      >>> round(gj.critical_sigma_w2("relu", 0.0), 4)
      2.0
    """
    check_real("sigma_b2", sigma_b2, minimum=0.0)
    act = _checked(activation)
    lo, hi = _search_range(sigma_w2_min, sigma_w2_max)
    return _critical_cached(act, float(sigma_b2), lo, hi, jax.config.jax_enable_x64)


@functools.lru_cache(maxsize=256)
def _critical_cached(act: Activation, sigma_b2: float, lo: float, hi: float, x64: bool) -> float:
    with jax.ensure_compile_time_eval():
        line = critical_line(act, [sigma_b2], sigma_w2_min=lo, sigma_w2_max=hi)
        found = bool(np.asarray(line.found)[0])
        value = float(np.asarray(line.sigma_w2)[0])
        low, high = float(np.asarray(line.chi1_low)[0]), float(np.asarray(line.chi1_high)[0])
    if not found:
        where = "already >= 1 at" if low >= 1 else "stays below 1 up to"
        edge = lo if low >= 1 else hi
        raise GradjaxInputError(
            f"activation={act.name!r} has no critical sigma_w2 in [{lo:g}, {hi:g}] at "
            f"sigma_b2={sigma_b2:g}: chi_1 is {where} sigma_w2={edge:g} (chi_1 = {low:.4g} at "
            f"{lo:g}, {high:.4g} at {hi:g}); widen sigma_w2_min/sigma_w2_max"
        )
    return value


# --------------------------------------------------------------------------- gradients


def predicted_gradient_growth(chi1: float | jax.Array, *, depth: int) -> jax.Array:
    """``chi_1^(L - l)`` for ``l = 1..L``: predicted ``E||dL/da_l||^2 / E||dL/da_L||^2``.

    Args:
      chi1: the gradient factor (scalar; vmap for several).
      depth: number of layers L.

    Returns:
      ``(depth,)`` squared-norm ratios, 1 at the last layer. Take the square root to compare
      with norms ``||dL/da_l|| / ||dL/da_L||``.
    """
    check_int("depth", depth, minimum=1)
    chi1 = jnp.asarray(chi1)
    if not jnp.issubdtype(chi1.dtype, jnp.floating):
        chi1 = chi1.astype(_float_dtype())
    powers = jnp.arange(depth - 1, -1, -1).astype(chi1.dtype)
    return chi1**powers
