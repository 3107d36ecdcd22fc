"""Gaussian expectations: the one quadrature rule behind every mean-field quantity.

Two expectations cover all of gradjax's theory (q-map, chi_1, c-map, free-probability
moments, normalisation rates):

* :func:`gaussian_expectation`: ``E[f(sqrt(q) z)]``, ``z ~ N(0, 1)``;
* :func:`pair_expectation`: ``E[f(u_1) g(u_2)]`` with ``u_1, u_2 ~ N(0, q)`` of correlation c.

Both must stay accurate where the integrand is sharp. ``f(sqrt(q) z)`` varies on the scale
``1/sqrt(q)`` around ``z = 0``: at the large q* of saturating activations near criticality
(sigmoid's q* ~ 47) Gauss-Hermite nodes, about ``pi / sqrt(2 n)`` apart near 0, do not
resolve ``phi'(sqrt(q) z)^2``. And ReLU, leaky ReLU, ELU and SELU have a kink at 0, where a
rule with nodes on both sides converges only algebraically. Both features sit at ``z = 0``
whatever q is (the kink of ``phi(sqrt(q) z)`` is at ``z = 0``; the poles of tanh, sigmoid and
their kin are at ``z = i pi (k + 1/2) / sqrt(q)``, on the imaginary axis).

The rule (:func:`half_line_rule`) is therefore graded towards 0 on each half line: panels
``[0, a 2^-P], ..., [a/4, a/2], [a/2, a]`` (``a`` = :data:`PANEL_WIDTH`), then equal panels
of width ``a`` up to :data:`Z_MAX`, each with ``n`` Gauss-Legendre nodes. A panel ``[b, 2b]``
sees the singularities near 0 at three half-widths from its centre, so its error falls as
``5.8^(-2n)`` whatever their distance to 0: one rule is exact to float64 round-off from
``q = 0`` to ``q ~ 1e10`` (the smallest panel), kinks at 0 fall on a panel boundary, and the
rule is symmetric, so odd integrands cancel exactly and a ReLU-type integral over ``z > 0``
gets exactly half the weight.

In two dimensions the standard variables ``(z_1, z_2)`` with ``u_1 = s z_1`` and
``u_2 = s (c z_1 + sqrt(1 - c^2) z_2)`` (``s = sqrt(q)``) are taken in polar form ``r, theta``:
``u_1 = s r cos(theta)``, ``u_2 = s r cos(theta - alpha)`` with ``c = cos(alpha)``. The kinks are
the rays ``theta = +-pi/2`` and ``theta = alpha +- pi/2``; the angle is integrated by
Gauss-Legendre on the four arcs between them (each integrand smooth on its arc) and the
radius by the graded rule with the weight ``r exp(-r^2/2)``. ReLU's arc-cosine kernel is then
exact to round-off.

Everything is a pure JAX function: ``jit`` and ``vmap`` over ``q`` and ``c`` grids work (the
nodes are constants), in float32 or float64 (``jax_enable_x64``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.utils.errors import check_int

Z_MAX = 12.0
"""End of the half-line rule in z (the normal mass beyond is below 1e-32)."""

PANEL_WIDTH = 1.5
"""Width of the equal panels of the half-line rule on ``[PANEL_WIDTH, Z_MAX]``."""

PANELS = 27
"""Halving panels per half line below :data:`PANEL_WIDTH`: the smallest is
``[0, PANEL_WIDTH 2^-PANELS]`` (about 1.1e-8)."""

NODES = 12
"""Gauss-Legendre nodes per panel (error about ``5.8^-24``, below float64 round-off)."""

PANELS_2D = 11
"""Halving radial panels of the two-dimensional rule (smallest ``[0, 7.3e-4]``)."""

NODES_2D = 10
"""Gauss-Legendre nodes per radial panel of the two-dimensional rule."""

ARC_NODES = 32
"""Gauss-Legendre nodes per arc between kinks (four arcs) of the two-dimensional rule."""


@functools.lru_cache(maxsize=16)
def half_line_rule(
    panels: int = PANELS, nodes: int = NODES, *, radial: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Graded composite Gauss-Legendre rule on ``[0, Z_MAX]`` for a Gaussian weight.

    Args:
      panels: number of panels halving towards 0 below :data:`PANEL_WIDTH` (the innermost
        one reaches 0).
      nodes: Gauss-Legendre nodes per panel.
      radial: weight ``r exp(-r^2/2)`` (the radius of a 2-D standard normal) instead of
        ``exp(-z^2/2)``.

    Returns:
      ``(nodes, weights)`` as float64 NumPy arrays, nodes ascending; the weights sum to 1/2
      (``radial=False``: half of the normal density's mass) or to 1 (``radial=True``).
    """
    check_int("panels", panels, minimum=1, maximum=200)
    check_int("nodes", nodes, minimum=1, maximum=200)
    # Halving panels below PANEL_WIDTH, equal ones of that width above (the Gaussian's own
    # scale: a panel [6, 12] would leave an error of ~1e-11 in the fourth moment).
    inner = PANEL_WIDTH * 2.0 ** -np.arange(panels, 0, -1, dtype=np.float64)
    outer = np.arange(PANEL_WIDTH, Z_MAX + 0.5 * PANEL_WIDTH, PANEL_WIDTH)
    edges = np.concatenate([[0.0], inner, outer])
    x, w = np.polynomial.legendre.leggauss(nodes)
    lo, hi = edges[:-1, None], edges[1:, None]
    pts = (0.5 * (hi - lo) * x + 0.5 * (hi + lo)).ravel()
    wts = (0.5 * (hi - lo) * w).ravel()
    if radial:
        wts = wts * pts * np.exp(-0.5 * pts**2)
        return pts, wts / wts.sum()
    wts = wts * np.exp(-0.5 * pts**2)
    return pts, 0.5 * wts / wts.sum()


@functools.lru_cache(maxsize=16)
def normal_rule(panels: int = PANELS, nodes: int = NODES) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``E[f(z)]``, ``z ~ N(0, 1)``: :func:`half_line_rule`, mirrored.

    Args:
      panels: graded panels per half line.
      nodes: Gauss-Legendre nodes per panel.

    Returns:
      ``(nodes, weights)`` as float64 NumPy arrays (symmetric, no node at 0); the weights sum
      to 1.
    """
    pts, wts = half_line_rule(panels, nodes)
    return np.concatenate([-pts[::-1], pts]), np.concatenate([wts[::-1], wts])


def _float_dtype(x) -> jnp.dtype:
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        return x.dtype
    return jnp.dtype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)


def gaussian_expectation(
    f: Callable[[jax.Array], jax.Array],
    q: float | jax.Array = 1.0,
    *,
    dtype: jnp.dtype | None = None,
) -> jax.Array:
    """``E[f(sqrt(q) z)]`` for ``z ~ N(0, 1)`` (``E[f(u)]``, ``u ~ N(0, q)``).

    Args:
      f: an elementwise function.
      q: the variance (a scalar; ``vmap`` for grids). ``q = 0`` gives ``f(0)`` (the limit from
        the nodes at ``+-0`` is evaluated at ``z`` values times 0).
      dtype: dtype of the computation; default ``q``'s floating dtype, else JAX's default.

    Returns:
      The expectation, a scalar.

    Example:
      >>> import jax.numpy as jnp, gradjax as gj
      >>> round(float(gj.gaussian.gaussian_expectation(lambda u: u**2, 2.0)), 6)
      2.0
    """
    dtype = _float_dtype(q) if dtype is None else jnp.dtype(dtype)
    q = jnp.asarray(q, dtype)
    nodes, weights = normal_rule()
    nodes, weights = jnp.asarray(nodes, dtype), jnp.asarray(weights, dtype)
    return jnp.sum(weights * f(jnp.sqrt(q) * nodes))


@functools.lru_cache(maxsize=4)
def _arc_rule(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(nodes)
    return 0.5 * (x + 1.0), 0.5 * w  # on [0, 1]


def pair_expectation(
    f: Callable[[jax.Array], jax.Array],
    g: Callable[[jax.Array], jax.Array] | None,
    q: float | jax.Array,
    c: float | jax.Array,
    *,
    dtype: jnp.dtype | None = None,
) -> jax.Array:
    """``E[f(u_1) g(u_2)]`` with ``u_1, u_2 ~ N(0, q)`` of correlation ``c``.

    Args:
      f: elementwise function of ``u_1``.
      g: elementwise function of ``u_2`` (``None``: the same as ``f``).
      q: the common variance (a scalar; ``vmap`` for grids).
      c: the correlation, in ``[-1, 1]`` (clipped).
      dtype: dtype of the computation; default ``q``'s floating dtype, else JAX's default.

    Returns:
      The expectation, a scalar.
    """
    g = f if g is None else g
    dtype = _float_dtype(q) if dtype is None else jnp.dtype(dtype)
    q = jnp.asarray(q, dtype)
    c = jnp.clip(jnp.asarray(c, dtype), -1.0, 1.0)
    r, wr = half_line_rule(PANELS_2D, NODES_2D, radial=True)
    t, wt = _arc_rule(ARC_NODES)
    r, wr = jnp.asarray(r, dtype), jnp.asarray(wr, dtype)
    t, wt = jnp.asarray(t, dtype), jnp.asarray(wt, dtype)
    # alpha = arccos(c), written so that c = +-1 gives 0 and pi exactly.
    alpha = jnp.arctan2(jnp.sqrt(jnp.maximum((1.0 - c) * (1.0 + c), 0.0)), c)
    half_pi = jnp.asarray(0.5 * math.pi, dtype)
    # The four arcs between the kink rays -pi/2 <= alpha - pi/2 <= pi/2 <= alpha + pi/2.
    starts = jnp.stack([-half_pi, alpha - half_pi, half_pi, alpha + half_pi])
    lengths = jnp.stack([alpha, math.pi - alpha, alpha, math.pi - alpha])
    theta = (starts[:, None] + lengths[:, None] * t[None, :]).ravel()
    w_theta = (lengths[:, None] * wt[None, :]).ravel() / (2.0 * math.pi)
    s = jnp.sqrt(q) * r
    u1 = s[:, None] * jnp.cos(theta)[None, :]
    u2 = s[:, None] * jnp.cos(theta - alpha)[None, :]
    return jnp.sum(wr[:, None] * w_theta[None, :] * f(u1) * g(u2))
