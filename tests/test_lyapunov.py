"""Lyapunov exponents by QR: closed forms, float64 singular values, stability, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.measure.lyapunov import (
    gaussian_product_exponents,
    lyapunov_spectrum,
    matrix_lyapunov_spectrum,
)


def test_orthogonal_linear_net_exponents_are_log_gain_at_depth_1000(getkey):
    # Orthogonal W scaled by g: every singular value of the product is exactly g^L, so every
    # exponent is log g. At L = 1000, g = 1.3 the naive product is 1.3^1000 = e^262: inf in
    # float32, while the QR exponents stay exact.
    gain = 1.3
    net = gj.build(
        gj.NetConfig(depth=1000, width=32, activation="linear", init="orthogonal", sigma_w=gain)
    )
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (32,))
    spec = jax.jit(lambda p, v: lyapunov_spectrum(net, p, v, k=6))(params, x)
    assert spec.exponents.shape == (6,) and spec.layer_log_r.shape == (1000, 6)
    np.testing.assert_allclose(spec.exponents, np.log(gain), atol=2e-5)
    naive = gj.jacobians.chain_product(gj.layer_jacobians(net, params, x))
    assert not np.all(np.isfinite(naive))  # what the QR method avoids


def test_linear_gaussian_exponents_match_closed_form(getkey):
    # Closed form (Newman 1986): lambda_i = (psi((n-i+1)/2) + log(2/n))/2 + log sigma_w, and
    # the QR estimate is exactly unbiased with variance psi'((n-i+1)/2)/(4 L) per seed (the
    # Bartlett decomposition; see gaussian_product_exponents). So the z-scores over seeds are
    # standard normal: 16 exponents all within 4.5 sd fails with probability ~1e-4, and the
    # mean square of 16 independent z^2 (chi^2_16 / 16) lies in [0.2, 2.5] with prob > 0.999.
    n, depth, seeds, sigma_w = 16, 300, 4, 1.2
    net = gj.build(gj.NetConfig(depth=depth, width=n, activation="linear", sigma_w=sigma_w))
    x = jnp.ones((n,))

    @jax.jit
    @jax.vmap
    def exps(key):
        return lyapunov_spectrum(net, net.init(key), x).exponents

    measured = exps(jax.random.split(getkey(), seeds))
    theory = gaussian_product_exponents(n, sigma_w=sigma_w)
    se = np.sqrt(np.asarray(theory.var_per_layer) / (depth * seeds))
    z = (np.mean(np.asarray(measured), axis=0) - np.asarray(theory.mean)) / se
    assert np.max(np.abs(z)) < 4.5, z
    assert 0.2 < np.mean(z**2) < 2.5, z


def test_gaussian_closed_form_values_against_monte_carlo_of_chi_square(getkey):
    # Independent source: E[log chi^2_m] and Var by sampling chi^2 directly (NumPy).
    n = 5
    rng = np.random.default_rng(0)
    theory = gaussian_product_exponents(n, sigma_w=2.0)
    for i in range(n):
        samples = 0.5 * np.log(rng.chisquare(n - i, size=400_000) / n) + np.log(2.0)
        assert abs(samples.mean() - float(theory.mean[i])) < 5 * samples.std() / np.sqrt(4e5)
        assert float(theory.var_per_layer[i]) == pytest.approx(samples.var(), rel=0.02)


def test_refined_qr_equals_log_singular_values_in_float64_at_depth_20(x64, getkey):
    # A nonlinear net (tanh, sigma_w = 1.5, width 8): after refinement sweeps the QR log-growth
    # equals log sigma_i of the explicitly formed product (LAPACK SVD in float64).
    net = gj.build(
        gj.NetConfig(
            depth=20, width=8, activation="tanh", sigma_w=1.5, sigma_b=0.1, dtype="float64"
        )
    )
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (8,), jnp.float64)
    log_sv = np.log(np.linalg.svd(np.asarray(gj.io_jacobian(net, params, x)), compute_uv=False))
    sweeps = 20
    refined = np.asarray(lyapunov_spectrum(net, params, x, sweeps=sweeps).log_growth)
    # Subspace iteration converges like exp(-2 sweeps gap_i) with gap_i the distance to the
    # neighbouring log sigma; the reference SVD resolves sigma_i only down to ~1e-16 sigma_1.
    gaps = np.abs(np.diff(log_sv))
    gap = np.minimum(np.r_[np.inf, gaps], np.r_[gaps, np.inf])
    checked = (2 * sweeps * gap > 25) & (log_sv > log_sv[0] + np.log(1e-12))
    assert checked.sum() >= 4  # the comparison is never vacuous
    # Weyl: the reference's own error in sigma_i is ~ eps sigma_1, i.e. eps sigma_1/sigma_i in
    # log sigma_i; 100 eps leaves room for the O(n) constants of LAPACK's backward error.
    tol = 1e-9 + 100 * np.finfo(np.float64).eps * np.exp(log_sv[0] - log_sv)
    assert np.all(np.abs(refined - log_sv)[checked] <= tol[checked]), (refined, log_sv, tol)
    # Without sweeps: the full sum is log|det J| exactly, and each leading partial sum is the
    # log-volume of the image of a k-frame, at most the sum of the k largest log sigma_i.
    # log|det J| = sum_l log|det J_l| (slogdet per layer) is exact where the SVD of the
    # product is not: its smallest sigma here lies below float64's resolution of J.
    plain = lyapunov_spectrum(net, params, x)
    per_layer = gj.layer_jacobians(net, params, x).all_layers()
    log_det = np.sum(np.linalg.slogdet(np.asarray(per_layer))[1])
    np.testing.assert_allclose(np.sum(plain.log_growth), log_det, rtol=0, atol=1e-9)
    ok = int(np.sum(log_sv > log_sv[0] + np.log(1e-12)))
    assert np.all(np.cumsum(plain.log_growth)[:ok] <= np.cumsum(log_sv)[:ok] + 1e-9)


def test_float32_matches_float64_at_depth_100(x64, getkey):
    # At criticality (tanh, sigma_w = 1) the float32 run must agree with the float64 run on
    # the same draws to round-off accumulated over 100 QR steps.
    cfg = gj.NetConfig(depth=100, width=16, activation="tanh", sigma_w=1.0, sigma_b=0.05)
    net32, net64 = gj.build(cfg), gj.build(cfg.replace(dtype="float64"))
    params64 = net64.init(getkey())
    params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params64)
    x64_ = jax.random.normal(getkey(), (16,), jnp.float64)
    s64 = lyapunov_spectrum(net64, params64, x64_).exponents
    s32 = lyapunov_spectrum(net32, params32, x64_.astype(jnp.float32)).exponents
    assert s32.dtype == jnp.float32
    np.testing.assert_allclose(s32, s64, atol=2e-4)


def test_matrix_version_agrees_with_network_version(getkey):
    net = gj.build(gj.NetConfig(depth=12, width=10, activation="erf", sigma_w=1.3))
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (10,))
    mats = gj.layer_jacobians(net, params, x).all_layers()
    a = lyapunov_spectrum(net, params, x, k=5, sweeps=1)
    b = matrix_lyapunov_spectrum(mats, k=5, sweeps=1)
    np.testing.assert_allclose(a.log_growth, b.log_growth, rtol=1e-4, atol=1e-4)


def test_rank_deficient_factor_is_data_not_a_crash():
    # A zero factor collapses every direction: log 0 = -inf, recorded rather than raised.
    mats = jnp.stack([jnp.eye(4), jnp.zeros((4, 4)), jnp.eye(4)])
    spec = matrix_lyapunov_spectrum(mats)
    assert np.all(np.asarray(spec.log_growth) == -np.inf)


def test_jit_does_not_recompile(getkey):
    net = gj.build(gj.NetConfig(depth=6, width=8, activation="tanh"))
    f = jax.jit(lambda p, v: lyapunov_spectrum(net, p, v, k=3).exponents)
    x = jnp.ones((8,))
    f(net.init(getkey()), x)
    f(net.init(getkey()), x)
    assert f._cache_size() == 1  # vmap over seeds is exercised by the closed-form test


@pytest.mark.parametrize(
    "kwargs, field",
    [({"k": 0}, "k=0"), ({"k": 9}, "k=9"), ({"k": 2.0}, "k=2.0"), ({"sweeps": -1}, "sweeps=-1")],
)
def test_bad_k_or_sweeps_raise(kwargs, field, getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8))
    with pytest.raises(gj.GradjaxInputError, match=field):
        lyapunov_spectrum(net, net.init(getkey()), jnp.ones(8), **kwargs)


def test_other_bad_input_raises(getkey):
    bn = gj.build(gj.NetConfig(depth=3, width=8, norm="batch"))
    with pytest.raises(gj.GradjaxInputError, match="norm='batch'"):
        lyapunov_spectrum(bn, bn.init(getkey()), jnp.ones(8))
    net = gj.build(gj.NetConfig(depth=3, width=8))
    with pytest.raises(gj.GradjaxInputError, match="x.shape"):
        lyapunov_spectrum(net, net.init(getkey()), jnp.ones((2, 8)))
    with pytest.raises(gj.GradjaxInputError, match="matrices.shape"):
        matrix_lyapunov_spectrum(jnp.ones((3, 4, 5)))
    with pytest.raises(gj.GradjaxInputError, match="depth=0"):
        matrix_lyapunov_spectrum(jnp.ones((0, 4, 4)))
    with pytest.raises(gj.GradjaxInputError, match="k=5"):
        gaussian_product_exponents(4, k=5)
    with pytest.raises(gj.GradjaxInputError, match="n=0"):
        gaussian_product_exponents(0)
