"""Dynamical isometry: the spectrum of ``J J^T`` of the input-output Jacobian at criticality.

A mean chain-rule factor of one (chi_1 = 1) fixes the *mean* eigenvalue of ``J J^T`` at one, but
not its spread. Free probability predicts the spread (Pennington, Schoenholz & Ganguli 2017,
"Resurrecting the sigmoid in deep learning through dynamical isometry", eqs. 14-17; and 2018,
"The emergence of spectral universality in deep networks"): with ``D_l = diag(phi'(h_l))`` at the
fixed point ``q*`` and the moments

    mu_k = E_{h ~ N(0, q*)}[phi'(h)^(2k)],        s_1 = -1 (Gaussian W), 0 (orthogonal W),

the first two moments of the eigenvalue distribution of ``J J^T`` after ``L`` layers are

    m_1 = (sigma_w^2 mu_1)^L,
    var = m_2 - m_1^2 = (sigma_w^2 mu_1)^(2L) * L * (mu_2 / mu_1^2 - 1 - s_1).

At criticality (sigma_w^2 mu_1 = 1) the variance grows linearly in depth with slope
``mu_2/mu_1^2 - 1 - s_1``: ``1`` for linear Gaussian nets, ``0`` for linear orthogonal nets,
``2`` (Gaussian) and ``1`` (orthogonal) for ReLU whatever q*, and ``-> 0`` for orthogonal tanh or
erf as ``q* -> 0`` (dynamical isometry). For a linear Gaussian network ``J J^T`` is a product
of Wishart-like matrices whose limiting law is Fuss-Catalan, with moments
``binom((L+1)k, k) / (Lk + 1)`` and right edge ``(L+1)^(L+1) / L^L``.

This module gives those predictions and the matching measurements on gradjax networks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.meanfield.activations import ActivationLike, derivative, get_activation
from gradjax.meanfield.gaussian import gaussian_expectation
from gradjax.measure.jacobians import layer_jacobians
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import GradjaxInputError, check_choice, check_int, check_real, invalid
from gradjax.utils.lapack import after, singular_values
from gradjax.utils.pytree import pytree_dataclass, static_field

WEIGHT_ENSEMBLES = ("gaussian", "orthogonal")
# First coefficient of the S-transform of W W^T (Pennington et al. 2017, sec. 2.5).
_S1 = {"gaussian": -1.0, "orthogonal": 0.0}


def _gauss_expectation(fn, q) -> jax.Array:
    # E_{h ~ N(0, q)}[fn(h)], elementwise over the shape of q (gradjax.meanfield.gaussian's one
    # rule).
    q = jnp.asarray(q)
    if not jnp.issubdtype(q.dtype, jnp.floating):
        q = q.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    return jnp.vectorize(lambda v: gaussian_expectation(fn, v))(q)


@pytree_dataclass
class DerivativeMoments:
    """Moments of the squared derivative at the fixed point.

    Attributes:
      mu1: ``E[phi'(h)^2]``, ``h ~ N(0, q*)``.
      mu2: ``E[phi'(h)^4]``.
    """

    mu1: jax.Array
    mu2: jax.Array


def derivative_moments(
    activation: ActivationLike, *, q_star: float | jax.Array
) -> DerivativeMoments:
    """``mu_1`` and ``mu_2`` of Pennington et al. (2017) by :mod:`gradjax.meanfield.gaussian`'s
    rule.

    Args:
      activation: a name from the activation table or a callable.
      q_star: pre-activation variance at the fixed point (``> 0``; may be traced). The rule is
        split at the kink ``h = 0``, so ReLU's ``mu_1 = mu_2 = 1/2`` are exact.

    Returns:
      :class:`DerivativeMoments` (vectorised over the shape of ``q_star``).
    """
    if not isinstance(q_star, jax.Array):
        check_real("q_star", q_star, strictly_positive=True)
    dphi = derivative(get_activation(activation))
    return DerivativeMoments(
        mu1=_gauss_expectation(lambda h: dphi(h) ** 2, q_star),
        mu2=_gauss_expectation(lambda h: dphi(h) ** 4, q_star),
    )


@pytree_dataclass
class CriticalPoint:
    """A point on the critical line, parametrised by its fixed point ``q*``.

    Attributes:
      q_star: the pre-activation variance fixed point.
      sigma_w2: ``1 / E[phi'(h)^2]`` (so that chi_1 = 1).
      sigma_b2: ``q* - sigma_w2 E[phi(h)^2]`` (so that q* is the fixed point).
    """

    q_star: jax.Array
    sigma_w2: jax.Array
    sigma_b2: jax.Array


def critical_point(activation: ActivationLike, *, q_star: float) -> CriticalPoint:
    """The (sigma_w^2, sigma_b^2) whose fixed point is ``q*`` and whose chi_1 is 1.

    Pennington et al. (2017) walk the critical line by ``q*``: small ``q*`` keeps the
    pre-activations in tanh's linear regime, which is what orthogonal weights need for
    dynamical isometry.

    Args:
      activation: a name or callable.
      q_star: the fixed point (``> 0``).

    Returns:
      A :class:`CriticalPoint`.

    Raises:
      GradjaxInputError: when no bias variance ``>= 0`` reaches that ``q*`` at chi_1 = 1.
    """
    check_real("q_star", q_star, strictly_positive=True)
    act = get_activation(activation)
    mu1 = derivative_moments(act, q_star=q_star).mu1
    sw2 = 1.0 / mu1
    sb2 = q_star - sw2 * _gauss_expectation(lambda h: act(h) ** 2, jnp.asarray(q_star))
    if float(sb2) < -1e-6 * q_star:
        raise invalid(
            "q_star",
            q_star,
            f"a fixed point reachable at chi_1 = 1 with sigma_b^2 >= 0 for "
            f"{act.name} (this q* needs sigma_b^2 = {float(sb2):.3g})",
        )
    return CriticalPoint(q_star=jnp.asarray(q_star), sigma_w2=sw2, sigma_b2=jnp.maximum(sb2, 0.0))


def critical_net(
    activation: ActivationLike, *, q_star: float, depth: int, width: int, init: str = "gaussian"
) -> tuple[Net, CriticalPoint]:
    """A network on the critical line at fixed point ``q*`` (see :func:`critical_point`).

    Args:
      activation: a name or callable.
      q_star: the fixed point (``> 0``).
      depth: number of blocks.
      width: hidden width.
      init: ``"gaussian"`` or ``"orthogonal"`` weights.

    Returns:
      ``(net, point)``: the network at ``sigma_w^2, sigma_b^2`` of the critical point, and it.
    """
    from gradjax.nets.config import NetConfig
    from gradjax.nets.models import build

    point = critical_point(activation, q_star=q_star)
    cfg = NetConfig(
        depth=depth,
        width=width,
        activation=activation,
        init=init,
        sigma_w=math.sqrt(float(point.sigma_w2)),
        sigma_b=math.sqrt(float(point.sigma_b2)),
    )
    return build(cfg), point


@pytree_dataclass
class IsometryPrediction:
    """Free-probability moments of the eigenvalues of ``J J^T`` (Pennington et al. 2017).

    Attributes:
      mean: ``m_1 = (sigma_w^2 mu_1)^L``.
      variance: ``m_2 - m_1^2``.
      slope: ``mu_2/mu_1^2 - 1 - s_1``: the variance per layer at criticality.
      mu1: ``E[phi'^2]``.
      mu2: ``E[phi'^4]``.
      s1: first S-transform coefficient of ``W W^T`` (-1 Gaussian, 0 orthogonal).
      ensemble: the weight ensemble.
    """

    mean: jax.Array
    variance: jax.Array
    slope: jax.Array
    mu1: jax.Array
    mu2: jax.Array
    s1: float = static_field(default=0.0)
    ensemble: str = static_field(default="gaussian")


def isometry_prediction(
    activation: ActivationLike,
    *,
    q_star: float,
    ensemble: str,
    depth: int | np.ndarray,
    sigma_w2: float | None = None,
) -> IsometryPrediction:
    """Predicted mean and variance of the eigenvalues of ``J J^T`` after ``depth`` layers.

    Example:
      >>> import gradjax as gj
      >>> p = gj.isometry.isometry_prediction("relu", q_star=1.0, ensemble="gaussian", depth=10,
      ...                            sigma_w2=2.0)
      >>> round(float(p.variance), 3)  # ReLU at He init: 2 L, no dynamical isometry
      20.0

    Args:
      activation: a name or callable.
      q_star: pre-activation variance fixed point (``> 0``).
      ensemble: ``"gaussian"`` or ``"orthogonal"`` weights.
      depth: number of layers ``L`` (``>= 1``), an int or an array of ints.
      sigma_w2: weight variance; default the critical ``1 / mu_1`` (chi_1 = 1).

    Returns:
      An :class:`IsometryPrediction` with the shape of ``depth``.
    """
    check_choice("ensemble", ensemble, WEIGHT_ENSEMBLES)
    depths = np.asarray(depth)
    if depths.dtype.kind not in "iu" or depths.size == 0 or np.any(depths < 1):
        raise invalid("depth", depth, "an integer >= 1 (or an array of them)")
    m = derivative_moments(activation, q_star=q_star)
    if sigma_w2 is None:
        sw2 = 1.0 / m.mu1
    else:
        check_real("sigma_w2", sigma_w2, strictly_positive=True)
        sw2 = jnp.asarray(sigma_w2, m.mu1.dtype)
    chi = sw2 * m.mu1
    s1 = _S1[ensemble]
    slope = m.mu2 / m.mu1**2 - 1.0 - s1
    ell = jnp.asarray(depths, m.mu1.dtype)
    return IsometryPrediction(
        mean=chi**ell,
        variance=chi ** (2.0 * ell) * ell * slope,
        slope=slope,
        mu1=m.mu1,
        mu2=m.mu2,
        s1=s1,
        ensemble=ensemble,
    )


def fuss_catalan_moment(depth: int, order: int) -> float:
    """``E[lambda^k]`` of the limiting spectrum of ``J J^T`` for a linear Gaussian net.

    ``J = W_L ... W_1`` with ``W`` i.i.d. ``N(0, 1/N)``; the law of ``J J^T`` is Fuss-Catalan
    with parameter ``L`` (Alexeev, Goetze & Tikhomirov 2010), moments
    ``binom((L+1)k, k) / (Lk + 1)``.

    Args:
      depth: ``L >= 1``.
      order: ``k >= 0``.

    Returns:
      The moment, a Python float.
    """
    check_int("depth", depth, minimum=1)
    check_int("order", order, minimum=0)
    return math.comb((depth + 1) * order, order) / (depth * order + 1)


def fuss_catalan_edge(depth: int) -> float:
    """Right edge ``(L+1)^(L+1) / L^L`` of the Fuss-Catalan law (largest eigenvalue of J J^T).

    Args:
      depth: ``L >= 1``.

    Returns:
      The edge (``4`` for ``L = 1``: Marchenko-Pastur; about ``e (L + 1)`` for large ``L``).
    """
    check_int("depth", depth, minimum=1)
    return math.exp((depth + 1) * math.log(depth + 1) - depth * math.log(depth))


def fuss_catalan_density(depth: int, *, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The Fuss-Catalan density with parameter ``L``, on its support.

    Parametric form (Haagerup & Moeller 2012; Neuschel 2014): for ``0 < t < pi/(L+1)``,

        x(t) = sin((L+1)t)^(L+1) / (sin t sin(Lt)^L),
        rho(x(t)) = sin(t)^2 sin(Lt)^(L-1) / (pi sin((L+1)t)^L).

    Args:
      depth: ``L >= 1``.
      points: curve points.

    Returns:
      ``(x, density)`` NumPy arrays, ``x`` ascending from near 0 to the edge.
    """
    check_int("depth", depth, minimum=1)
    check_int("points", points, minimum=2)
    ell = depth
    # Interior points only: the density diverges at x -> 0 (t -> pi/(L+1)).
    t = np.linspace(0.0, np.pi / (ell + 1), points + 2)[1:-1]
    sin_a = np.sin((ell + 1) * t)
    x = sin_a ** (ell + 1) / (np.sin(t) * np.sin(ell * t) ** ell)
    rho = np.sin(t) ** 2 * np.sin(ell * t) ** (ell - 1) / (np.pi * sin_a**ell)
    order = np.argsort(x)
    return x[order], rho[order]


@pytree_dataclass
class JacobianSpectra:
    """Eigenvalues of ``J J^T`` for the Jacobian of the first ``d`` blocks, at several ``d``.

    Attributes:
      eigenvalues: ``(len(depths), width)``, descending: squared singular values of
        ``J_d ... J_1 = da_d/dx``.
      depths: the depths ``d`` (static).
    """

    eigenvalues: jax.Array
    depths: tuple[int, ...] = static_field(default=())


def jacobian_spectra(
    net: Net, params: Params, x: jax.Array, *, depths: tuple[int, ...] | list[int]
) -> JacobianSpectra:
    """The spectrum of ``J J^T`` of the partial products ``J_d ... J_1`` at several depths.

    One forward pass gives all block Jacobians; the running product is carried through the
    layers in segments and its singular values taken at each requested depth, so a single
    compiled function serves every depth of one network.

    Args:
      net: a network without BatchNorm with ``input_dim == width``.
      params: its parameters.
      x: one input, ``(width,)``.
      depths: increasing ints in ``[1, net.cfg.depth]``.

    Returns:
      A :class:`JacobianSpectra`. The product is formed explicitly, so its smallest
      eigenvalues are only resolved down to ``eps * lambda_max`` (use
      :func:`gradjax.lyapunov_spectrum` with ``sweeps > 0`` beyond that).
    """
    cfg = net.cfg
    depths = tuple(depths) if isinstance(depths, (list, tuple, np.ndarray)) else (depths,)
    depths = tuple(int(d) if isinstance(d, np.integer) else d for d in depths)
    if not depths:
        raise invalid("depths", depths, f"a non-empty increasing sequence in [1, {cfg.depth}]")
    for d in depths:
        check_int("depths[i]", d, minimum=1, maximum=cfg.depth)
    if any(b <= a for a, b in zip(depths[:-1], depths[1:], strict=True)):
        raise invalid("depths", depths, "strictly increasing depths")
    if cfg.input_dim != cfg.width:
        raise GradjaxInputError(
            f"input_dim={cfg.input_dim} is invalid here: expected input_dim == width ({cfg.width}) "
            "so that J J^T and J^T J share one spectrum"
        )
    jac = layer_jacobians(net, params, x)
    prod = jac.first
    eigs = []
    done = 1
    for d in depths:
        if d > done:
            prod, _ = jax.lax.scan(
                lambda acc, j: (j @ acc, None), prod, jac.hidden[done - 1 : d - 1]
            )
            done = d
        # One SVD after the other: concurrent LAPACK calls can deadlock (gradjax.utils.lapack).
        eigs.append(singular_values(after(prod, *eigs)) ** 2)
    return JacobianSpectra(eigenvalues=jnp.stack(eigs), depths=depths)


@pytree_dataclass
class SpectrumMoments:
    """Empirical moments of eigenvalues (last axis reduced).

    Attributes:
      mean: mean eigenvalue.
      variance: population variance of the eigenvalues.
      max: largest eigenvalue.
    """

    mean: jax.Array
    variance: jax.Array
    max: jax.Array


def spectrum_moments(eigenvalues: jax.Array) -> SpectrumMoments:
    """Mean, variance and maximum of eigenvalues along the last axis.

    Args:
      eigenvalues: ``(..., n)``.

    Returns:
      :class:`SpectrumMoments` with the leading shape.
    """
    return SpectrumMoments(
        mean=jnp.mean(eigenvalues, axis=-1),
        variance=jnp.var(eigenvalues, axis=-1),
        max=jnp.max(eigenvalues, axis=-1),
    )


def isometry_input(
    key: jax.Array,
    dim: int,
    *,
    q_star: float,
    sigma_w2: float,
    sigma_b2: float = 0.0,
    dtype=jnp.float32,
) -> jax.Array:
    """An input whose first-layer pre-activations have variance ``q*`` (so the signal starts
    at the fixed point rather than converging to it).

    ``q_1 = sigma_w^2 ||x||^2 / dim + sigma_b^2``, so ``||x||^2 = dim (q* - sigma_b^2)/sigma_w^2``;
    the direction is uniform on the sphere.

    Args:
      key: PRNG key.
      dim: input dimension.
      q_star: target pre-activation variance.
      sigma_w2: weight variance.
      sigma_b2: bias variance (``<= q*``).
      dtype: floating dtype.

    Returns:
      ``(dim,)``.
    """
    check_int("dim", dim, minimum=1)
    check_real("q_star", q_star, strictly_positive=True)
    check_real("sigma_w2", sigma_w2, strictly_positive=True)
    check_real("sigma_b2", sigma_b2, minimum=0.0)
    if sigma_b2 > q_star:
        raise invalid("sigma_b2", sigma_b2, f"a value <= q_star ({q_star})")
    v = jax.random.normal(key, (dim,), dtype)
    radius = math.sqrt(dim * (q_star - sigma_b2) / sigma_w2)
    return v * jnp.asarray(radius, dtype) / jnp.linalg.norm(v)
