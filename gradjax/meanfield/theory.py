"""Mean-field theory of signal and gradient propagation, by Gaussian quadrature in JAX.

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

Gaussian expectations use the one rule of :mod:`gradjax.meanfield.gaussian` (graded Gauss-Legendre
panels split at 0, exact to round-off for kinked activations and from q = 0 to q ~ 1e10).

The critical line ``chi_1 = 1`` separates the ordered phase (gradients vanish) from the chaotic
one (gradients explode). Everything here is a pure JAX function of ``(sigma_w2, sigma_b2)`` that
``jit`` and ``vmap`` accept (the activation is static), float64 when ``jax_enable_x64`` is on.
Fixed points are found by iteration accelerated with safeguarded Newton steps; each result says
whether it converged, after how many iterations and with what residual, and why not
(:data:`STATUSES`): a fixed point that does not exist (ReLU with ``sigma_w^2 > 2``, GELU past
the saddle-node of its length map: q grows without bound) is reported as ``q* = inf`` with
status ``"diverges"``, and the critical line holds only true crossings of ``chi_1 = 1``: a jump
of chi_1 across 1 (where q* starts to diverge) is reported as a jump.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.meanfield.activations import (
    Activation,
    ActivationLike,
    checked_activation,
    derivative,
)
from gradjax.meanfield.gaussian import gaussian_expectation, pair_expectation
from gradjax.utils.errors import GradjaxInputError, check_int, check_real, invalid
from gradjax.utils.pytree import pytree_dataclass

Q_CAP = 1e30
"""The q iteration stops once q passes this: the fixed point diverges."""

Q_LIMIT = 1e16
"""chi_1 and the slopes of a diverging q* are their limits q -> inf, evaluated here (where
the quadrature is still exact); divergence is also certified by the length map staying
above the identity from where the iteration stopped up to this q."""

STATUSES = ("converged", "diverges", "no_convergence", "unstable")
"""Names of :attr:`FixedPoint.status` codes: ``converged`` to a stable fixed point;
``diverges`` (no finite fixed point is reached: q grows without bound, reported as inf);
``no_convergence`` (the iteration limit was hit); ``unstable`` (stopped at a fixed point
whose slope exceeds 1, where rounding decides whether a signal stays or leaves)."""

CONVERGED, DIVERGES, NO_CONVERGENCE, UNSTABLE = range(4)

_Q_FLOOR = 1e-30  # q below this is evaluated as the q -> 0+ limit (see _mean_field_point)

SIGMA_W2_RANGE = (1e-2, 1e4)
"""The sigma_w^2 range searched for the critical point (log-spaced scan, then bisection)."""


def _float_dtype() -> jnp.dtype:
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def _second_derivative(act: Activation) -> Callable[[jax.Array], jax.Array]:
    return derivative(derivative(act))


# --------------------------------------------------------------------------- maps


def _as_float(x, dtype) -> jax.Array:
    return jnp.asarray(x, dtype)


def _as_q(q) -> jax.Array:
    q = jnp.asarray(q)
    return q if jnp.issubdtype(q.dtype, jnp.floating) else q.astype(_float_dtype())


def q_map(
    q: jax.Array, *, activation: ActivationLike, sigma_w2: jax.Array, sigma_b2: jax.Array
) -> jax.Array:
    """The length map ``q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2``.

    Args:
      q: pre-activation variance of the previous layer.
      activation: a name or an elementwise callable.
      sigma_w2: weight variance sigma_w^2 (times 1/N per entry).
      sigma_b2: bias variance.

    Returns:
      The next layer's variance.
    """
    act = checked_activation(activation)
    q = _as_q(q)
    second = gaussian_expectation(lambda u: act.fn(u) ** 2, q)
    return _as_float(sigma_w2, q.dtype) * second + _as_float(sigma_b2, q.dtype)


def _q_slope(act: Activation, q, sigma_w2):
    # Price's theorem: d/dq E[g(u)] = E[g''(u)] / 2 for u ~ N(0, q); with g = phi^2 this is
    # E[phi'^2 + phi phi''], finite at q = 0 (where d/dq of sqrt(q) is not).
    d1, d2 = derivative(act), _second_derivative(act)
    return sigma_w2 * gaussian_expectation(lambda u: d1(u) ** 2 + act.fn(u) * d2(u), q)


def gradient_factor(q: jax.Array, *, activation: ActivationLike, sigma_w2: jax.Array) -> jax.Array:
    """``sigma_w^2 E[phi'(sqrt(q) z)^2]``: chi_1 when evaluated at ``q = q*``.

    Args:
      q: pre-activation variance.
      activation: a name or an elementwise callable.
      sigma_w2: weight variance.

    Returns:
      The mean squared singular value of a layer Jacobian at variance q.
    """
    act = checked_activation(activation)
    q = _as_q(q)
    d1 = derivative(act)
    return _as_float(sigma_w2, q.dtype) * gaussian_expectation(lambda u: d1(u) ** 2, q)


def c_map(
    c: jax.Array,
    *,
    activation: ActivationLike,
    q: jax.Array,
    sigma_w2: jax.Array,
    sigma_b2: jax.Array,
) -> jax.Array:
    """The correlation map at variance q (normally q*).

    Args:
      c: the correlation of two inputs' pre-activations, in [-1, 1].
      activation: a name or an elementwise callable.
      q: the (common) pre-activation variance.
      sigma_w2: weight variance.
      sigma_b2: bias variance.

    Returns:
      ``(sigma_w^2 E[phi(u_1) phi(u_2)] + sigma_b^2) / q_2``, where ``q_2`` is the same
      numerator at ``c = 1`` (equal to q at the fixed point q*): normalising by the 2-D rule's
      own value keeps ``c = 1`` an exact fixed point, whatever the rule's error at large q.
    """
    act = checked_activation(activation)
    q = _as_q(q)
    c = jnp.asarray(c, q.dtype)
    sw2, sb2 = _as_float(sigma_w2, q.dtype), _as_float(sigma_b2, q.dtype)
    cross = sw2 * pair_expectation(act.fn, None, q, c) + sb2
    same = sw2 * pair_expectation(act.fn, None, q, jnp.ones_like(c)) + sb2
    return cross / same


def _c_slope(act: Activation, q, c, sigma_w2):
    # Price's theorem again: d/dc E[phi(u1) phi(u2)] = q E[phi'(u1) phi'(u2)], so the slope of
    # the normalised map is sigma_w^2 E[phi'(u1) phi'(u2)] (= chi_1 at c = 1).
    d1 = derivative(act)
    return sigma_w2 * pair_expectation(d1, None, q, c)


# --------------------------------------------------------------------------- fixed points


@pytree_dataclass
class FixedPoint:
    """A fixed point found by (Newton-accelerated) iteration, with its convergence record.

    Attributes:
      value: the fixed point; ``inf`` when it diverges; where the iteration stopped otherwise.
      converged: whether ``|map(value) - value| <= atol + rtol |value|``.
      iterations: iterations used.
      residual: ``map(x) - x`` where the iteration stopped.
      status: an index into :data:`STATUSES` (``"converged"``, ``"diverges"``,
        ``"no_convergence"``, ``"unstable"``); :func:`status_name` spells it.
    """

    value: jax.Array
    converged: jax.Array
    iterations: jax.Array
    residual: jax.Array
    status: jax.Array


def status_name(status: int | jax.Array) -> str:
    """The name in :data:`STATUSES` of a concrete status code (e.g. ``FixedPoint.status``)."""
    return STATUSES[int(np.asarray(status))]


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
    certify_divergence: bool = False,
) -> FixedPoint:
    """Finds a stable fixed point of ``fmap`` on ``[lower, upper]``.

    Each step is a Newton step on ``fmap(x) - x`` when the map's slope is below 1 (so Newton
    heads for a stable fixed point, not an unstable one) and the step lowers the residual;
    otherwise a plain iteration ``x <- fmap(x)``, which converges to the stable fixed point
    the network itself reaches layer after layer. Stops at ``max_iter`` or once ``x >= cap``
    (divergence). With ``certify_divergence``, an iteration that stopped while still rising
    is classed as diverging when the map stays above the identity from there to
    :data:`Q_LIMIT` (no fixed point is left to reach).
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
    finite = jnp.isfinite(x)
    converged = done(x, r) & finite
    # A fixed point with slope above 1 repels: the iteration only stays there because it
    # started on it to rounding accuracy (float32 and float64 then part ways).
    unstable = converged & (slope(jnp.where(finite, x, x0)) > 1.0 + 1e-4)
    diverges = ~converged & (~finite | (x >= cap))
    if certify_divergence:
        grid = jnp.exp(
            jnp.linspace(0.0, 1.0, 48, dtype=x.dtype)
            * (math.log(Q_LIMIT) - jnp.log(jnp.clip(x, 1.0, Q_LIMIT)))
            + jnp.log(jnp.clip(x, 1.0, Q_LIMIT))
        )
        above = jnp.all(jax.vmap(resid)(grid) > 0)
        diverges = diverges | (~converged & finite & (r > 0) & above)
    status = jnp.where(
        diverges,
        DIVERGES,
        jnp.where(unstable, UNSTABLE, jnp.where(converged, CONVERGED, NO_CONVERGENCE)),
    ).astype(jnp.int32)
    value = jnp.where(diverges, jnp.inf, x)
    return FixedPoint(value=value, converged=converged, iterations=it, residual=r, status=status)


def q_fixed_point(
    activation: ActivationLike,
    sigma_w2: jax.Array,
    sigma_b2: jax.Array,
    *,
    q0: float = 1.0,
    max_iter: int = 500,
) -> FixedPoint:
    """The fixed point q* of the length map, reached from ``q0`` as a deep network reaches it.

    Args:
      activation: a name or an elementwise callable.
      sigma_w2: weight variance (may be traced).
      sigma_b2: bias variance (may be traced).
      q0: the starting variance (an input of unit variance per coordinate gives about
        ``sigma_w^2 + sigma_b^2`` after one layer). Where the length map has an unstable
        fixed point (GELU near its saddle-node) the stable point reached depends on the side
        of it that q0 is on, as a network's does on its input's length.
      max_iter: iteration limit.

    Returns:
      A :class:`FixedPoint`. Where no finite fixed point is reached (ReLU with
      ``sigma_w^2 > 2``; GELU at ``sigma_b^2 = 0.05`` above ``sigma_w^2 ~ 2.234``) its value
      is ``inf`` and its status ``"diverges"``.
    """
    act = checked_activation(activation)
    sw2, sb2 = _pair(sigma_w2, sigma_b2)
    fmap = lambda q: q_map(q, activation=act, sigma_w2=sw2, sigma_b2=sb2)
    slope = lambda q: _q_slope(act, q, sw2)
    return _solve_fixed_point(
        fmap,
        slope,
        jnp.asarray(q0, sw2.dtype),
        lower=0.0,
        upper=math.inf,
        cap=Q_CAP,
        max_iter=max_iter,
        certify_divergence=True,
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
      q_star: fixed point of the length map: ``inf`` where it diverges (``q_status``), where
        the iteration stopped if it did not converge.
      chi1: ``sigma_w^2 E[phi'(sqrt(q*) z)^2]``, the per-layer gradient factor (its limit
        ``q -> inf`` where q* diverges: the factor of a signal that grows without bound).
      q_slope: ``dq^{l+1}/dq^l`` at q* (its log gives xi_q).
      c_star: stable fixed point of the correlation map (NaN when q* = 0: signals vanish and
        correlations are undefined).
      chi_c: slope of the correlation map at c*.
      xi_q: ``-1 / ln q_slope`` (``inf`` at or past marginal stability).
      xi_c: ``-1 / ln chi_c`` (``inf`` on the critical line).
      xi_grad: ``-1 / ln chi_1``: positive when gradients vanish, negative when they explode,
        ``inf`` when ``chi_1 = 1``.
      q_converged: whether q* converged; ``q_iterations``, ``q_residual``: its record.
      q_status: why it stopped, an index into :data:`STATUSES` (see :func:`status_name`).
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
    q_status: jax.Array
    c_converged: jax.Array
    c_iterations: jax.Array
    c_residual: jax.Array


def _marginal(slope: jax.Array) -> jax.Array:
    # Within a few ulps of 1: the rule's weights sum to 1 only to rounding, so an exactly
    # marginal map (linear at sigma_w^2 = 1) lands there, and a depth scale of 1/eps layers
    # is infinite at working precision.
    return jnp.abs(slope - 1.0) <= 4.0 * jnp.finfo(slope.dtype).eps


def _depth_scale(slope: jax.Array) -> jax.Array:
    # -1/ln(slope) for a contracting map; infinite at (or numerically past) marginality.
    ok = (slope > 0) & (slope < 1) & ~_marginal(slope)
    return jnp.where(ok, -1.0 / jnp.log(jnp.where(ok, slope, 0.5)), jnp.inf)


def _gradient_depth_scale(chi1: jax.Array) -> jax.Array:
    marginal = _marginal(chi1)
    safe = jnp.where((chi1 > 0) & ~marginal, chi1, 0.5)
    xi = -1.0 / jnp.log(safe)
    return jnp.where(marginal, jnp.inf, jnp.where(chi1 > 0, xi, 0.0))


def _q_eval(q: jax.Array) -> jax.Array:
    # At q* = 0 (a dying signal) chi_1 and the slopes are limits q -> 0+: evaluating at a tiny
    # positive q gives ReLU's 1/2 rather than relu'(0)^2 = 0. At q* = inf (diverging) they are
    # limits q -> inf, taken at Q_LIMIT, where the quadrature is still exact.
    return jnp.clip(q, _Q_FLOOR, Q_LIMIT)


def _mean_field_point(act, sw2, sb2, max_iter) -> MeanField:
    qfp = q_fixed_point(act, sw2, sb2, max_iter=max_iter)
    q = qfp.value
    q_eval = _q_eval(q)
    chi1 = gradient_factor(q_eval, activation=act, sigma_w2=sw2)
    q_slope = _q_slope(act, q_eval, sw2)
    positive = q > 0
    q_safe = jnp.where(positive, q_eval, 1.0)
    fmap = lambda c: c_map(c, activation=act, q=q_safe, sigma_w2=sw2, sigma_b2=sb2)
    slope = lambda c: _c_slope(act, q_safe, c, sw2)
    cfp = _solve_fixed_point(
        fmap,
        slope,
        # Without a signal (q* = 0) there is no correlation to find: start on the fixed
        # point c = 1 so that this lane does not hold a vmapped grid's loop.
        jnp.where(positive, 0.5, 1.0).astype(q.dtype),
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
        q_status=qfp.status,
        c_converged=cfp.converged & positive,
        c_iterations=cfp.iterations,
        c_residual=cfp.residual,
    )


@functools.lru_cache(maxsize=64)
def _mean_field_fn(act: Activation, max_iter: int, ndim: int):
    fn = lambda sw2, sb2: _mean_field_point(act, sw2, sb2, max_iter)
    for _ in range(ndim):
        fn = jax.vmap(fn)
    return jax.jit(fn)


def mean_field(
    activation: ActivationLike,
    sigma_w2: float | jax.Array,
    sigma_b2: float | jax.Array,
    *,
    max_iter: int = 500,
) -> MeanField:
    """All mean-field predictions at ``(sigma_w^2, sigma_b^2)`` (broadcast, any shape).

    Jitted and vmapped internally (one compile per activation, settings and rank); inside
    a user's own ``jit``/``vmap`` it traces through as well.

    Args:
      activation: a name or an elementwise callable.
      sigma_w2: weight variance(s), finite and >= 0.
      sigma_b2: bias variance(s), finite and >= 0.
      max_iter: fixed-point iteration limit.

    Returns:
      A :class:`MeanField` with the broadcast shape of the inputs.

    Raises:
      GradjaxInputError: for a negative or non-finite variance, an unknown or
        non-differentiable activation.

    Example:
      >>> import gradjax as gj
      >>> mf = gj.mean_field("tanh", 1.5, 0.05)
      >>> float(mf.chi1)  # doctest: +SKIP
      1.07...
    """
    act = checked_activation(activation)
    check_int("max_iter", max_iter, minimum=1)
    sw2, sb2 = _pair(sigma_w2, sigma_b2)
    sw2, sb2 = jnp.broadcast_arrays(sw2, sb2)
    return _mean_field_fn(act, max_iter, sw2.ndim)(sw2, sb2)


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
      sigma_w2: critical sigma_w^2, where chi_1 crosses 1 continuously (NaN where there is
        no such crossing in the searched range).
      chi1_low: chi_1 at the low end of the searched sigma_w^2 range.
      chi1_high: chi_1 at the high end.
      found: whether a crossing was found.
      jump: whether chi_1 instead jumps across 1 (q* diverges there: GELU at
        ``sigma_b^2 = 0.05``); then ``jump_sigma_w2`` is where, and ``chi1_below`` /
        ``chi1_above`` are chi_1 on its two sides.
      jump_sigma_w2: the sigma_w^2 of the jump (NaN without one).
      chi1_below: chi_1 just below the first upward passage of 1 (NaN without one).
      chi1_above: chi_1 just above it (0.1% above a jump in sigma_w^2, on its diverging side).
    """

    sigma_b2: jax.Array
    sigma_w2: jax.Array
    chi1_low: jax.Array
    chi1_high: jax.Array
    found: jax.Array
    jump: jax.Array
    jump_sigma_w2: jax.Array
    chi1_below: jax.Array
    chi1_above: jax.Array


_JUMP_TOL = 1e-3
"""chi_1 may differ by this much across the final bisection bracket (a few float32 ulps of
sigma_w^2 wide) and still count as a continuous crossing; a jump is O(0.1)."""


@functools.lru_cache(maxsize=64)
def _critical_fn(act: Activation, lo: float, hi: float, scan: int, steps: int):
    def chi1_at(log_sw2, sb2):
        sw2 = jnp.exp(log_sw2)
        q = _q_eval(q_fixed_point(act, sw2, sb2).value)  # the limits, as in mean_field
        return gradient_factor(q, activation=act, sigma_w2=sw2)

    def one(sb2):
        dtype = sb2.dtype
        logs = jnp.linspace(math.log(lo), math.log(hi), scan, dtype=dtype)
        chi = jax.vmap(lambda s: chi1_at(s, sb2))(logs)
        above = chi >= 1.0
        idx = jnp.argmax(above)
        passes = jnp.any(above) & (idx > 0)
        a, b = logs[jnp.maximum(idx - 1, 0)], logs[idx]

        # Bisection on the first upward passage: the smallest sigma_w^2 with chi_1 = 1, so a
        # non-monotone chi_1 still gives the edge of the ordered phase.
        def bisect(_, ab):
            a, b = ab
            mid = 0.5 * (a + b)
            up = chi1_at(mid, sb2) >= 1.0
            return jnp.where(up, a, mid), jnp.where(up, mid, b)

        a, b = jax.lax.fori_loop(0, steps, bisect, (a, b))
        # A crossing is continuous; a passage where chi_1 leaps over 1 across a bracket of a
        # few ulps is a jump (q* starts to diverge there), not a critical point.
        below_chi, above_chi = chi1_at(a, sb2), chi1_at(b, sb2)
        continuous = jnp.abs(above_chi - below_chi) <= _JUMP_TOL
        found = passes & continuous
        jump = passes & ~continuous
        # Right at a jump the iteration from q0 may sit on the unstable fixed point that is
        # about to cross q0; a step of 0.1% in sigma_w^2 beyond it shows the diverging side.
        above_chi = jnp.where(jump, chi1_at(b + 1e-3, sb2), above_chi)
        where = jnp.exp(0.5 * (a + b))
        return CriticalLine(
            sigma_b2=sb2,
            sigma_w2=jnp.where(found, where, jnp.nan),
            chi1_low=chi[0],
            chi1_high=chi[-1],
            found=found,
            jump=jump,
            jump_sigma_w2=jnp.where(jump, where, jnp.nan),
            chi1_below=jnp.where(passes, below_chi, jnp.nan),
            chi1_above=jnp.where(passes, above_chi, jnp.nan),
        )

    return jax.jit(jax.vmap(one))


def critical_line(
    activation: ActivationLike,
    sigma_b2: float | Sequence[float] | np.ndarray,
    *,
    sigma_w2_min: float = SIGMA_W2_RANGE[0],
    sigma_w2_max: float = SIGMA_W2_RANGE[1],
    scan: int = 64,
) -> CriticalLine:
    """The critical sigma_w^2 (chi_1 = 1) for each sigma_b^2, vectorised.

    A log-spaced scan of chi_1 over ``[sigma_w2_min, sigma_w2_max]`` brackets the first upward
    passage of 1, then 48 bisection steps (in log sigma_w^2) pin it down. It is a critical
    point only if chi_1 is continuous there; where chi_1 jumps over 1 because q* starts to
    diverge (GELU at ``sigma_b^2 = 0.05``, from 0.73 to 1.12 at ``sigma_w^2 = 2.234``) the
    result says ``jump`` and gives where, and no critical point. Saturating activations with
    a small phi'(0) have their critical point at large sigma_w^2 (sigmoid: phi'(0) = 1/4, so
    sigma_w^2 > 16), which the default range covers.

    Args:
      activation: a name or an elementwise callable.
      sigma_b2: bias variance(s).
      sigma_w2_min: low end of the search (> 0).
      sigma_w2_max: high end of the search.
      scan: scan points.

    Returns:
      A :class:`CriticalLine` (NaN and ``found=False`` where no crossing is in range).
    """
    act = checked_activation(activation)
    sb2 = _grid("sigma_b2", sigma_b2)
    lo, hi = _search_range(sigma_w2_min, sigma_w2_max)
    check_int("scan", scan, minimum=2)
    with jax.ensure_compile_time_eval():
        return _critical_fn(act, lo, hi, scan, 48)(jnp.asarray(sb2, _float_dtype()))


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
        message says why: chi_1 at both ends, or the jump over 1 and where).

    Example:
      >>> import gradjax as gj
      >>> round(gj.theory.critical_sigma_w2("relu", 0.0), 4)
      2.0
    """
    check_real("sigma_b2", sigma_b2, minimum=0.0)
    act = checked_activation(activation)
    lo, hi = _search_range(sigma_w2_min, sigma_w2_max)
    return _critical_cached(act, float(sigma_b2), lo, hi, jax.config.jax_enable_x64)


def no_crossing_reason(line: CriticalLine, lo: float, hi: float, index: int = 0) -> str:
    """Why ``line`` has no critical point at entry ``index``, in words (for messages).

    Args:
      line: a :class:`CriticalLine` (concrete values).
      lo: low end of the searched sigma_w^2 range.
      hi: high end.
      index: the entry of ``line``.

    Returns:
      One sentence.
    """
    get = lambda name: float(np.asarray(getattr(line, name)).reshape(-1)[index])
    low, high = get("chi1_low"), get("chi1_high")
    if bool(np.asarray(line.jump).reshape(-1)[index]):
        return (
            f"chi_1 jumps from {get('chi1_below'):.4g} to {get('chi1_above'):.4g} at "
            f"sigma_w2={get('jump_sigma_w2'):.6g}, where q* starts to diverge (from q0 = 1 no "
            "finite fixed point is reached above it), without crossing 1"
        )
    if low >= 1:
        return f"chi_1 is already >= 1 at sigma_w2={lo:g} (chi_1 = {low:.4g})"
    return (
        f"chi_1 stays below 1 up to sigma_w2={hi:g} (chi_1 = {low:.4g} at {lo:g}, "
        f"{high:.4g} at {hi:g})"
    )


@functools.lru_cache(maxsize=256)
def _critical_cached(act: Activation, sigma_b2: float, lo: float, hi: float, x64: bool) -> float:
    with jax.ensure_compile_time_eval():
        line = critical_line(act, [sigma_b2], sigma_w2_min=lo, sigma_w2_max=hi)
        found = bool(np.asarray(line.found)[0])
        value = float(np.asarray(line.sigma_w2)[0])
    if not found:
        raise GradjaxInputError(
            f"activation={act.name!r} has no critical sigma_w2 in [{lo:g}, {hi:g}] at "
            f"sigma_b2={sigma_b2:g}: {no_crossing_reason(line, lo, hi)}"
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
