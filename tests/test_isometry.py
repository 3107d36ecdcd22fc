"""Free-probability predictions for J J^T and their measurement on gradjax networks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special

import gradjax as gj
from gradjax.measure.isometry import (
    critical_point,
    derivative_moments,
    fuss_catalan_density,
    fuss_catalan_edge,
    fuss_catalan_moment,
    isometry_input,
    isometry_prediction,
    jacobian_spectra,
    spectrum_moments,
)


def _gauss(fn, q):
    # Independent of Gauss-Hermite: adaptive quadrature of fn(h) N(h; 0, q) over +-40 sd.
    dens = lambda h: math.exp(-(h**2) / (2 * q)) / math.sqrt(2 * math.pi * q)
    edge = 40 * math.sqrt(q)
    return integrate.quad(lambda h: fn(h) * dens(h), -edge, edge, epsabs=1e-13, limit=200)[0]


def _sech(h):
    return 2 * math.exp(-abs(h)) / (1 + math.exp(-2 * abs(h)))  # no overflow


@pytest.mark.parametrize("q", [0.01, 0.3, 2.0])
def test_erf_moments_match_closed_form(q):
    # phi = erf: phi'(h)^(2k) = (4/pi)^k exp(-2k h^2), so mu_k = (4/pi)^k / sqrt(1 + 4 k q).
    # float32 Gauss-Hermite with 100 nodes: ~1e-5 relative for the narrowest integrand here.
    m = derivative_moments("erf", q_star=q)
    assert float(m.mu1) == pytest.approx(4 / math.pi / math.sqrt(1 + 4 * q), rel=1e-4)
    assert float(m.mu2) == pytest.approx((4 / math.pi) ** 2 / math.sqrt(1 + 8 * q), rel=1e-4)


def test_relu_and_linear_moments_are_exact():
    relu = derivative_moments("relu", q_star=0.7)
    assert float(relu.mu1) == pytest.approx(0.5, abs=1e-6)
    assert float(relu.mu2) == pytest.approx(0.5, abs=1e-6)
    p = isometry_prediction("relu", q_star=1.0, ensemble="gaussian", depth=10, sigma_w2=2.0)
    # Pennington et al. (2017): ReLU at He init, sigma^2 = L (mu2/mu1^2 - 1 - s1) = 2L.
    assert float(p.mean) == pytest.approx(1.0, abs=1e-5)
    assert float(p.variance) == pytest.approx(20.0, rel=1e-5)
    po = isometry_prediction("relu", q_star=1.0, ensemble="orthogonal", depth=10, sigma_w2=2.0)
    assert float(po.variance) == pytest.approx(10.0, rel=1e-5)
    lin = isometry_prediction("linear", q_star=1.0, ensemble="orthogonal", depth=50)
    assert float(lin.variance) == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("q", [1 / 64, 0.5])
def test_tanh_critical_point_against_adaptive_quadrature(q):
    cp = critical_point("tanh", q_star=q)
    sech4 = _gauss(lambda h: _sech(h) ** 4, q)
    tanh2 = _gauss(lambda h: math.tanh(h) ** 2, q)
    assert float(cp.sigma_w2) == pytest.approx(1 / sech4, rel=1e-5)  # chi_1 = 1
    assert float(cp.sigma_b2) == pytest.approx(q - tanh2 / sech4, abs=1e-6)  # q* fixed point
    slope = _gauss(lambda h: _sech(h) ** 8, q) / sech4**2 - 1
    pred = isometry_prediction("tanh", q_star=q, ensemble="orthogonal", depth=np.array([1, 8]))
    # mu2/mu1^2 - 1 cancels to ~1e-3 here: float32 leaves ~1e-7 absolute.
    np.testing.assert_allclose(pred.variance, [slope, 8 * slope], rtol=1e-4, atol=1e-6)


def test_orthogonal_tanh_approaches_isometry_as_q_star_vanishes():
    slopes = [
        float(isometry_prediction("tanh", q_star=q, ensemble="orthogonal", depth=1).slope)
        for q in (1.0, 0.1, 0.01, 0.001)
    ]
    assert all(b < a for a, b in zip(slopes[:-1], slopes[1:], strict=True))
    # Small-q expansion: mu2/mu1^2 - 1 = Var(sech^4)/mu1^2 ~ Var(2 h^2) = 8 q^2.
    assert slopes[-1] == pytest.approx(8e-6, rel=0.05)


def test_fuss_catalan_density_integrates_to_its_moments():
    for depth in (1, 2, 5):
        x, rho = fuss_catalan_density(depth, points=20000)
        # The density diverges like x^(-L/(L+1)) at 0; the trapezoid rule on the fine
        # parametric grid still gets the mass and first moments to 1e-3.
        for k in range(3):
            assert np.trapezoid(x**k * rho, x) == pytest.approx(
                fuss_catalan_moment(depth, k), rel=2e-3
            )
        assert x.max() == pytest.approx(fuss_catalan_edge(depth), rel=1e-6)
    # L = 1 is Marchenko-Pastur at ratio 1: rho = sqrt((4 - x)/x) / (2 pi), edge 4.
    x, rho = fuss_catalan_density(1, points=500)
    np.testing.assert_allclose(rho, np.sqrt((4 - x) / x) / (2 * np.pi), rtol=1e-8)
    assert fuss_catalan_moment(3, 2) == special.comb(8, 2) / 7 == 4.0  # = L + 1


def test_linear_gaussian_moments_and_edge_monte_carlo(getkey):
    # Measured mean and second moment of J J^T against Fuss-Catalan (m1 = 1, m2 = L + 1).
    # Width 96, 6 seeds: the Monte Carlo standard error of the mean over seeds of m2 is a few
    # percent; the finite-width bias is O(L/N) (e.g. exactly 1/N for L = 1), below 5% here.
    n, depths, seeds = 96, (1, 2, 4), 6
    net = gj.build(gj.NetConfig(depth=4, width=n, activation="linear"))
    x = jnp.ones((n,))
    f = jax.jit(jax.vmap(lambda k: jacobian_spectra(net, net.init(k), x, depths=depths)))
    eig = np.asarray(f(jax.random.split(getkey(), seeds)).eigenvalues)  # (seed, depth, n)
    m1 = eig.mean(axis=(0, 2))
    m2 = (eig**2).mean(axis=(0, 2))
    np.testing.assert_allclose(m1, 1.0, rtol=0.04)
    np.testing.assert_allclose(m2, [fuss_catalan_moment(d, 2) for d in depths], rtol=0.1)
    # The largest eigenvalue sits at the edge for L << N (Tracy-Widom fluctuations ~N^-2/3).
    lam_max = np.median(eig[:, 0, 0])
    assert lam_max == pytest.approx(fuss_catalan_edge(1), rel=0.08)


def test_variance_grows_linearly_with_depth_relu_at_he_init(getkey):
    # Prediction (Pennington et al. 2017): sigma^2(J J^T) = L (mu2/mu1^2 - 1 - s1) = 2L for
    # ReLU with Gaussian weights at He init, while the mean stays 1 (claim C10's nuance).
    # Tolerance: the free-probability value is the N -> infinity limit; at finite width ReLU's
    # second moment carries an extra factor ~exp(5 L/N) (Hanin 2018: +3% to +17% for
    # L/N = 1/128 .. 1/32), and a median over 5 draws of the eigenvalue variance scatters by
    # ~10%. So each depth must sit in [0.8, 1.4] x 2L and var(4)/var(1) in [3, 5.5] (linear
    # growth: 4). Slope 1 (orthogonal weights) or 0 (a mean factor of 1 alone) fails.
    n, depths, seeds = 128, (1, 2, 3, 4), 5
    net = gj.build(gj.NetConfig(depth=4, width=n, activation="relu", sigma_w=2**0.5))
    keys = jax.random.split(getkey(), seeds)

    @jax.jit
    @jax.vmap
    def moments(key):
        k1, k2 = jax.random.split(key)
        x = isometry_input(k2, n, q_star=1.0, sigma_w2=2.0)
        return spectrum_moments(jacobian_spectra(net, net.init(k1), x, depths=depths).eigenvalues)

    m = moments(keys)
    var = np.median(np.asarray(m.variance), 0)
    pred = isometry_prediction(
        "relu", q_star=1.0, ensemble="gaussian", depth=np.array(depths), sigma_w2=2.0
    )
    ratio = var / np.asarray(pred.variance)
    assert np.all((ratio > 0.8) & (ratio < 1.4)), var
    assert 3.0 < var[-1] / var[0] < 5.5, var
    # The mean is 1 in expectation; the active fraction of each layer fluctuates by
    # 1/(2 sqrt(N)) = 4.4%, so one draw's mean scatters by ~9% at L = 4: 20% is > 2 sd.
    np.testing.assert_allclose(np.mean(np.asarray(m.mean), 0), 1.0, rtol=0.2)


def test_isometry_input_hits_the_fixed_point(getkey):
    x = isometry_input(getkey(), 50, q_star=0.3, sigma_w2=2.0, sigma_b2=0.1)
    assert float(jnp.sum(x**2)) * 2.0 / 50 + 0.1 == pytest.approx(0.3, rel=1e-5)


def test_bad_input_raises(getkey):
    with pytest.raises(gj.GradjaxInputError, match="depth=0"):
        isometry_prediction("tanh", q_star=0.1, ensemble="gaussian", depth=0)
    with pytest.raises(gj.GradjaxInputError, match="ensemble='haar'"):
        isometry_prediction("tanh", q_star=0.1, ensemble="haar", depth=3)
    with pytest.raises(gj.GradjaxInputError, match="q_star=-1"):
        derivative_moments("tanh", q_star=-1.0)
    with pytest.raises(gj.GradjaxInputError, match="depth=0"):
        fuss_catalan_edge(0)
    net = gj.build(gj.NetConfig(depth=3, width=8))
    params = net.init(getkey())
    with pytest.raises(gj.GradjaxInputError, match="depths"):
        jacobian_spectra(net, params, jnp.ones(8), depths=(2, 4))
    with pytest.raises(gj.GradjaxInputError, match="depths"):
        jacobian_spectra(net, params, jnp.ones(8), depths=(2, 1))
    with pytest.raises(gj.GradjaxInputError, match="sigma_b2"):
        isometry_input(getkey(), 8, q_star=0.1, sigma_w2=1.0, sigma_b2=0.2)


def test_critical_net_sits_on_the_critical_line(getkey):
    # Linear: phi' = 1 gives sigma_w^2 = 1 and no bias for any q*.
    net, point = gj.isometry.critical_net("linear", q_star=0.5, depth=3, width=8)
    assert net.cfg.sigma_w == pytest.approx(1.0) and net.cfg.sigma_b == pytest.approx(0.0)
    # tanh: a wide net started at q* stays at q* (the fixed point), layer after layer.
    net, point = gj.isometry.critical_net(
        "tanh", q_star=0.25, depth=6, width=1024, init="orthogonal"
    )
    assert net.cfg.sigma_w**2 == pytest.approx(float(point.sigma_w2), rel=1e-6)
    keys = jax.random.split(getkey(), 4)
    sw2, sb2 = float(point.sigma_w2), float(point.sigma_b2)
    x = jax.vmap(
        lambda k: gj.isometry.isometry_input(k, 1024, q_star=0.25, sigma_w2=sw2, sigma_b2=sb2)
    )(keys)
    q = gj.forward_statistics(net, net.init(getkey()), x).q
    np.testing.assert_allclose(np.mean(np.asarray(q), axis=1), 0.25, rtol=0.1)
