"""The one Gaussian-expectation rule against closed forms and float64 adaptive quadrature."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from gradjax.meanfield import gaussian


def _adaptive(fn, q):
    """E[fn(sqrt(q) z)] by scipy's adaptive quadrature, in float64, split at 0 and at the
    decades of z where fn(sqrt(q) z) changes (independent of the rule under test)."""
    s = math.sqrt(q)
    dens = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    cuts = [0.0] + [10.0**k for k in range(-8, 2)] + [12.0]
    total = 0.0
    for sign in (1.0, -1.0):
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            total += integrate.quad(
                lambda t, sign=sign: fn(sign * s * t) * dens(t),
                lo,
                hi,
                epsabs=1e-18,
                epsrel=1e-13,
                limit=200,
            )[0]
    return total


def _sech2(x):
    return 0.0 if abs(x) > 300 else 1.0 / math.cosh(x) ** 2


def _sigmoid(x):
    return 0.0 if x < -700 else 1.0 / (1.0 + math.exp(-x))


SMOOTH = {
    "tanh^2": (lambda u: jnp.tanh(u) ** 2, lambda x: math.tanh(x) ** 2),
    "tanh'^2": (lambda u: (1 - jnp.tanh(u) ** 2) ** 2, lambda x: _sech2(x) ** 2),
    "sigmoid^2": (lambda u: jax.nn.sigmoid(u) ** 2, lambda x: _sigmoid(x) ** 2),
    "sigmoid'^2": (
        lambda u: (jax.nn.sigmoid(u) * (1 - jax.nn.sigmoid(u))) ** 2,
        lambda x: (_sigmoid(x) * (1 - _sigmoid(x))) ** 2,
    ),
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_tanh_and_sigmoid_against_float64_adaptive_quadrature(name, x64):
    # q from 0.01 to 1e4: at q = 1e4 the integrand changes over |z| ~ 0.01, which a
    # Gauss-Hermite or equally spaced rule does not resolve. Measured: <= 7e-15 relative.
    f_jax, f_py = SMOOTH[name]
    for q in (0.01, 1.0, 100.0, 1e4):
        got = float(gaussian.gaussian_expectation(f_jax, jnp.float64(q)))
        assert got == pytest.approx(_adaptive(f_py, q), rel=1e-12), q


def test_closed_forms(x64):
    for q in (1e-4, 0.3, 1.0, 200.0, 1e4):
        # ReLU: E[relu(u)^2] = q/2 and E[relu'(u)^2] = 1/2 exactly (the kink is a panel edge).
        relu2 = gaussian.gaussian_expectation(lambda u: jax.nn.relu(u) ** 2, q)
        assert float(relu2) == pytest.approx(q / 2, rel=1e-13)
        step = gaussian.gaussian_expectation(lambda u: (u > 0).astype(u.dtype), q)
        assert float(step) == pytest.approx(0.5, rel=1e-15)
        # Linear: E[u^2] = q, E[u^4] = 3 q^2.
        assert float(gaussian.gaussian_expectation(lambda u: u**2, q)) == pytest.approx(q, 1e-13)
        assert float(gaussian.gaussian_expectation(lambda u: u**4, q)) == pytest.approx(
            3 * q * q, rel=1e-13
        )
        # erf (Williams 1997): E[erf(u)^2] = (2/pi) arcsin(2q / (1 + 2q)).
        erf2 = gaussian.gaussian_expectation(lambda u: jax.scipy.special.erf(u) ** 2, q)
        want = 2 / math.pi * math.asin(2 * q / (1 + 2 * q))
        assert float(erf2) == pytest.approx(want, rel=1e-13)
    # q = 0 is the point mass at 0.
    assert float(gaussian.gaussian_expectation(lambda u: jnp.cos(u), 0.0)) == pytest.approx(1.0)


@pytest.mark.parametrize("c", [-1.0, -0.6, 0.0, 0.35, 0.9, 0.999, 1.0])
def test_pair_expectation_closed_forms(c, x64):
    q = 1.7
    # Cho & Saul (2009) arc-cosine kernel of degree 1 for ReLU, and degree 0 (the step):
    # E[relu(u1) relu(u2)] = q (sqrt(1 - c^2) + (pi - arccos c) c) / (2 pi).
    relu = gaussian.pair_expectation(jax.nn.relu, None, q, c)
    want = q * (math.sqrt(1 - c * c) + (math.pi - math.acos(c)) * c) / (2 * math.pi)
    assert float(relu) == pytest.approx(want, abs=1e-13)  # measured <= 1e-15
    step = gaussian.pair_expectation(lambda u: (u > 0).astype(u.dtype), None, q, c)
    assert float(step) == pytest.approx((math.pi - math.acos(c)) / (2 * math.pi), abs=1e-13)
    # Williams (1997) arcsine kernel for erf.
    erf = gaussian.pair_expectation(jax.scipy.special.erf, None, q, c)
    assert float(erf) == pytest.approx(2 / math.pi * math.asin(2 * q * c / (1 + 2 * q)), abs=1e-10)
    # Linear: E[u1 u2] = q c; mixed: E[u1^2 u2^2] = q^2 (1 + 2 c^2) (Isserlis).
    assert float(gaussian.pair_expectation(lambda u: u, None, q, c)) == pytest.approx(
        q * c, abs=1e-13
    )
    mixed = gaussian.pair_expectation(lambda u: u**2, lambda u: u**2, q, c)
    assert float(mixed) == pytest.approx(q * q * (1 + 2 * c * c), rel=1e-12)


def test_pair_expectation_of_tanh_against_nested_adaptive_quadrature(x64):
    # Reference: E_{z1}[tanh(s z1) E_{z2}[tanh(s (c z1 + c' z2))]] by nested scipy quadrature.
    def reference(q, c):
        s, cp = math.sqrt(q), math.sqrt(1 - c * c)
        dens = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

        def inner(z1):
            kink = -c * z1 / cp
            pts = [kink] if abs(kink) < 12 else None
            f = lambda z2: math.tanh(s * (c * z1 + cp * z2)) * dens(z2)
            return integrate.quad(f, -12, 12, epsabs=1e-15, limit=400, points=pts)[0]

        f = lambda z1: math.tanh(s * z1) * inner(z1) * dens(z1)
        return integrate.quad(f, -12, 12, epsabs=1e-14, limit=400, points=[0.0])[0]

    # Measured: 3e-16 at q = 1, 2e-11 / 9e-10 at q = 47 (sigmoid's critical q*), c = 0.2 / 0.9.
    for q, c, tol in ((1.0, 0.9, 1e-13), (47.0, 0.2, 1e-9), (47.0, 0.9, 1e-8)):
        got = float(gaussian.pair_expectation(jnp.tanh, None, q, c))
        assert got == pytest.approx(reference(q, c), abs=tol), (q, c)


def test_jit_and_vmap_over_q_and_c_grids():
    qs = jnp.array([0.5, 1.0, 4.0])
    cs = jnp.array([0.0, 0.5, 1.0])
    one_d = jax.jit(jax.vmap(lambda q: gaussian.gaussian_expectation(jnp.square, q)))(qs)
    np.testing.assert_allclose(np.asarray(one_d), np.asarray(qs), rtol=1e-5)
    grid = jax.jit(
        jax.vmap(jax.vmap(lambda q, c: gaussian.pair_expectation(lambda u: u, None, q, c)))
    )(*jnp.meshgrid(qs, cs, indexing="ij"))
    np.testing.assert_allclose(np.asarray(grid), np.outer(qs, cs), rtol=1e-5, atol=1e-6)
    assert grid.dtype == jnp.float32


def test_rules_are_normalised_and_symmetric():
    nodes, weights = gaussian.normal_rule()
    assert np.all(nodes != 0) and np.allclose(nodes, -nodes[::-1]) and np.all(weights > 0)
    assert weights.sum() == pytest.approx(1.0, rel=1e-15)
    r, w = gaussian.half_line_rule(radial=True)
    assert w.sum() == pytest.approx(1.0, rel=1e-15)
    assert float(np.sum(w * r**2)) == pytest.approx(2.0, rel=1e-12)  # E[r^2] of a 2-D normal
