"""Spectrum summaries and forward statistics against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj


def test_singular_values_of_a_diagonal_matrix():
    s = gj.singular_values(jnp.diag(jnp.array([3.0, -2.0, 0.5])))
    np.testing.assert_allclose(s, [3.0, 2.0, 0.5], rtol=1e-6)
    summary = gj.summarize_spectrum(s)
    assert float(summary.mean_sq) == pytest.approx((9 + 4 + 0.25) / 3)
    assert float(summary.condition) == pytest.approx(6.0)


def test_mean_sq_is_normalised_frobenius_norm(getkey):
    j = jax.random.normal(getkey(), (5, 7, 7))
    summary = gj.spectrum_summary(j)
    np.testing.assert_allclose(summary.mean_sq, jnp.sum(j**2, axis=(1, 2)) / 7, rtol=1e-5)


def test_singular_matrix_has_infinite_condition():
    summary = gj.spectrum_summary(jnp.zeros((3, 3)))
    assert np.isinf(float(summary.condition))


def test_linear_net_length_map_is_sigma_w_squared(getkey):
    # For a linear Gaussian net, q_l = sigma_w^2 q_{l-1} + sigma_b^2 in the wide limit;
    # at width 2048 the relative fluctuation of q per layer is ~sqrt(2/2048) = 3%.
    net = gj.build(gj.NetConfig(depth=3, width=2048, activation="linear", sigma_w=1.2, sigma_b=0.0))
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (2, 2048))
    stats = gj.forward_statistics(net, params, x)
    q0 = jnp.mean(x**2, axis=1)
    for l in range(3):
        np.testing.assert_allclose(stats.q[l], 1.2 ** (2 * (l + 1)) * q0, rtol=0.15)
    # Correlations of a linear net are preserved layer to layer (c_l = c_0 in the limit).
    c0 = float(jnp.dot(x[0], x[1]) / jnp.sqrt(jnp.dot(x[0], x[0]) * jnp.dot(x[1], x[1])))
    np.testing.assert_allclose(stats.c[:, 0, 1], c0, atol=0.08)
    np.testing.assert_allclose(stats.c[:, 0, 0], 1.0, rtol=1e-5)
