"""BatchNorm / LayerNorm: scale invariance, normalised moments, the mean-field growth rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

import gradjax as gj
from gradjax.measure.normalization import gaussian_expectation


def _batch(key, b, d, dtype=jnp.float32):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (b, d), dtype), jax.random.normal(ky, (b, 1), dtype)


# ---------------------------------------------------------------- scale invariance


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_scale_invariance_is_exact_in_float64(x64, getkey, norm):
    # Independent source: algebra. Norm(c z) = Norm(z) when eps = 0, so the block map and the
    # loss do not depend on c and dL/d(cW) = dL/dW / c. eps = 1e-14 bounds the residual at
    # eps / Var(z) ~ 1e-14.
    cfg = gj.NetConfig(
        depth=4,
        width=10,
        activation="tanh",
        norm=norm,
        norm_eps=1e-14,
        sigma_b=0.5,
        dtype="float64",
    )
    net = gj.build(cfg)
    params = net.init(getkey())
    x, y = _batch(getkey(), 6, 10, jnp.float64)
    cs = jnp.array([0.1, 7.3])
    # c traced under jit and vmap: one compilation for every scale.
    f = jax.jit(
        jax.vmap(lambda c: gj.normalization.scale_invariance(net, params, x, y, layer=2, c=c))
    )
    r = f(cs)
    assert r.batch_coupled
    assert float(r.jacobian_rel_change.max()) < 1e-10
    assert float(r.output_rel_change.max()) < 1e-10
    assert float(r.loss_rel_change.max()) < 1e-10
    assert float(r.grad_rel_err.max()) < 1e-10
    np.testing.assert_allclose(r.grad_ratio, 1.0 / cs, rtol=1e-10)


def test_scale_invariance_is_violated_without_a_norm(getkey):
    x, y = _batch(getkey(), 8, 16)
    plain = gj.build(gj.NetConfig(depth=4, width=16))
    r = gj.normalization.scale_invariance(plain, plain.init(getkey()), x, y, layer=1, c=3.0)
    # Without a norm the block Jacobian scales with c (tanh saturates, so by less than 3x).
    assert float(r.jacobian_rel_change) > 0.3 and float(r.grad_rel_err) > 0.1


# ---------------------------------------------------------------- normalised moments


def test_batchnorm_output_has_zero_mean_unit_variance_per_feature(getkey):
    net = gj.build(gj.NetConfig(depth=5, width=24, activation="relu", norm="batch", sigma_b=1.0))
    params = net.init(getkey())
    x, _ = _batch(getkey(), 16, 24)
    s = jax.jit(gj.normalization.norm_statistics, static_argnums=0)(net, params, x)
    assert s.axis == "batch" and s.mean.shape == (5, 24)
    np.testing.assert_allclose(s.mean, 0.0, atol=2e-6)
    # Independent: u = (z - mean) / sqrt(var + eps) has variance var / (var + eps) exactly.
    z = net.forward(params, x).preact
    vz = np.var(np.asarray(z, np.float64), axis=1)
    np.testing.assert_allclose(s.var, vz / (vz + net.cfg.norm_eps), rtol=2e-5)
    np.testing.assert_allclose(s.var, 1.0, atol=1e-3)


# ---------------------------------------------------------------- mean-field rates


def test_gaussian_expectation_matches_moments():
    # E[g^2] = 1, E[g^4] = 3, E[relu(g)] = 1/sqrt(2 pi): closed forms.
    np.testing.assert_allclose(gaussian_expectation(lambda g: g**2), 1.0, rtol=1e-6)
    np.testing.assert_allclose(gaussian_expectation(lambda g: g**4), 3.0, rtol=1e-6)
    np.testing.assert_allclose(gaussian_expectation(jax.nn.relu), 1 / np.sqrt(2 * np.pi), rtol=1e-6)


@pytest.mark.parametrize("b", [4, 8, 32, 100])
def test_bn_rate_linear_is_the_closed_form(b):
    # Yang et al. (2019): a linear BatchNorm network's gradients explode at (B-2)/(B-3).
    # Every Monte Carlo draw gives tr(P) = B - 2 and v = 1, so this is exact to rounding.
    rate = gj.normalization.bn_gradient_rate("linear", batch_size=b, samples=256)
    np.testing.assert_allclose(float(rate), (b - 2) / (b - 3), rtol=1e-5)


def test_bn_rate_relu_large_batch_is_pi_over_pi_minus_one():
    # Yang et al. (2019): ReLU BatchNorm networks explode at pi / (pi - 1) for large batches.
    np.testing.assert_allclose(
        float(gj.normalization.bn_gradient_rate("relu")), np.pi / (np.pi - 1), rtol=1e-5
    )
    # The finite-batch Monte Carlo converges to it; the gap is O(1/B).
    big = gj.normalization.bn_gradient_rate("relu", batch_size=1024, samples=4096)
    np.testing.assert_allclose(float(big), np.pi / (np.pi - 1), rtol=5e-3)


def test_bn_rate_finite_batch_matches_explicit_matrices():
    # Independent evaluation of E[tr(P D G D P)] / ((B-3) E[v]) with explicit B x B matrices
    # in NumPy (no trace simplification), on separate random draws.
    b, n = 6, 40000
    rng = np.random.default_rng(0)
    g = rng.standard_normal((n, b))
    g -= g.mean(1, keepdims=True)
    u = g * np.sqrt(b / (g**2).sum(1, keepdims=True))
    gm = np.eye(b) - np.ones((b, b)) / b
    d = 1.0 - np.tanh(u) ** 2
    proj = gm[None] - u[:, :, None] * u[:, None, :] / b
    dm = d[:, :, None] * gm[None] * d[:, None, :]  # D G D
    tr = np.einsum("nij,njk,nki->n", proj, dm, proj)
    a = np.tanh(u)
    v = ((a - a.mean(1, keepdims=True)) ** 2).mean(1)
    expected = tr.mean() / ((b - 3) * v.mean())
    got = float(gj.normalization.bn_gradient_rate("tanh", batch_size=b, samples=1 << 16))
    np.testing.assert_allclose(got, expected, rtol=1e-2)


def test_ln_rate_matches_scipy_quadrature():
    np.testing.assert_allclose(float(gj.normalization.ln_gradient_rate("linear")), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(gj.normalization.ln_gradient_rate("relu")), 1.0, rtol=1e-6)
    dens = lambda t: np.exp(-0.5 * t * t) / np.sqrt(2 * np.pi)
    num = integrate.quad(lambda t: (1 - np.tanh(t) ** 2) ** 2 * dens(t), -40, 40)[0]
    den = integrate.quad(lambda t: np.tanh(t) ** 2 * dens(t), -40, 40)[0]
    np.testing.assert_allclose(
        float(gj.normalization.ln_gradient_rate("tanh")), num / den, rtol=1e-5
    )


def test_rate_table_covers_every_activation():
    t = gj.normalization.rate_table(batch_sizes=(8,), samples=2048)
    assert t.activations == gj.activation_names()
    assert t.batch_norm.shape == (len(t.activations), 1)
    # BatchNorm explodes for every activation of the table at finite batch (Yang et al. 2019).
    assert bool(jnp.all(t.batch_norm > 1.0))
    i = t.activations.index("relu")
    np.testing.assert_allclose(float(t.batch_norm_inf[i]), np.pi / (np.pi - 1), rtol=1e-5)


# ---------------------------------------------------------------- measured growth


def test_measured_bn_growth_matches_the_derived_rate(getkey):
    # Deep (50 layers), wide (256) BatchNorm nets at init: the fitted per-layer factor of
    # ||dL/da_l||^2 agrees with the mean-field rate within `tol` (finite width shifts it by
    # O(1/N); seeds are averaged in log space).
    activation, batch, tol = "relu", 32, 0.04
    net = gj.build(gj.NetConfig(depth=50, width=256, activation=activation, norm="batch"))
    m = gj.normalization.norm_gradient_growth(net, getkey(), batch=batch, seeds=2)
    theory = float(gj.normalization.bn_gradient_rate(activation, batch_size=batch))
    assert m.activations.shape == (2, 50)
    np.testing.assert_allclose(float(m.fit.rate), theory, rtol=tol)


def test_fit_layer_growth_recovers_a_geometric_profile():
    layers = np.arange(40)
    norms = np.sqrt(1.3 ** (40 - layers))  # ||g_l||^2 grows by 1.3 per layer towards l = 0
    fit = gj.normalization.fit_layer_growth(jnp.asarray(np.stack([norms, 2 * norms])))
    np.testing.assert_allclose(float(fit.rate), 1.3, rtol=1e-5)
    assert (fit.first, fit.last) == (8, 32)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8, norm="batch"))
    with pytest.raises(gj.GradjaxInputError, match="batch"):
        gj.normalization.norm_gradient_growth(net, getkey(), batch=1)
    with pytest.raises(gj.GradjaxInputError, match="at least 2"):
        net.apply(None, jnp.ones((1, 8)))  # rejected before any parameter is read
    with pytest.raises(gj.GradjaxInputError, match="norm"):
        gj.NetConfig(depth=3, width=8, norm="group")
    with pytest.raises(gj.GradjaxInputError, match="residual"):
        gj.NetConfig(depth=3, width=8, residual="highway")
    with pytest.raises(gj.GradjaxInputError, match="residual_alpha"):
        gj.NetConfig(depth=3, width=8, residual="scaled", residual_alpha=-0.5)
    with pytest.raises(gj.GradjaxInputError, match="batch_size"):
        gj.normalization.bn_gradient_rate("relu", batch_size=1)
    with pytest.raises(gj.GradjaxInputError, match="c="):
        gj.normalization.scale_invariance(
            net, None, jnp.ones((4, 8)), jnp.ones((4, 1)), layer=1, c=-2.0
        )
    with pytest.raises(gj.GradjaxInputError, match="index"):
        gj.normalization.scale_block(net, None, layer=3, c=2.0)
    with pytest.raises(gj.GradjaxInputError, match="norm"):
        gj.normalization.norm_statistics(
            gj.build(gj.NetConfig(depth=2, width=4)), None, jnp.ones((2, 4))
        )
    # B <= 3: the expected inverse batch variance diverges, so does the rate.
    assert np.isinf(float(gj.normalization.bn_gradient_rate("tanh", batch_size=3)))
