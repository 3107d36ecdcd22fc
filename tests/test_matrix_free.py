"""Matrix-free estimators against materialised Jacobians and exact singular values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.utils.errors import GradjaxInputError


def _matrix(key, m, n):
    return jax.random.normal(key, (m, n)) / math.sqrt(n)


def test_hutchinson_error_shrinks_as_one_over_sqrt_probes(getkey):
    # Exact reference: tr(A^T A) / n from the matrix. Over 300 independent estimates the RMS
    # error at k probes should scale as 1/sqrt(k): 16 -> 256 probes is a factor 4.
    a = _matrix(getkey(), 96, 96) * jnp.linspace(0.2, 2.0, 96)[None, :]
    exact = float(jnp.sum(a**2) / 96)
    keys = jax.random.split(getkey(), 300)

    def rms(k):
        est = jax.jit(
            jax.vmap(
                lambda kk: gj.matrix_free.hutchinson_mean_sq(
                    lambda v: a @ v, kk, in_shape=(96,), out_size=96, probes=k
                )
            )
        )(keys)
        err = np.asarray(est.value) - exact
        return math.sqrt(np.mean(err**2)), float(np.mean(np.asarray(est.stderr)))

    (r16, s16), (r64, s64), (r256, s256) = rms(16), rms(64), rms(256)
    assert 3.2 < r16 / r256 < 5.0
    assert 1.6 < r16 / r64 < 2.5
    # The stated standard error is calibrated: it matches the observed RMS error (+-25%).
    for r, s in ((r16, s16), (r64, s64), (r256, s256)):
        assert s == pytest.approx(r, rel=0.25)


def test_lanczos_sigma_max_matches_svd(getkey):
    a = _matrix(getkey(), 200, 160)
    exact = float(np.linalg.svd(np.asarray(a), compute_uv=False)[0])
    top = jax.jit(
        lambda k: gj.matrix_free.lanczos_sigma_max(
            lambda v: a @ v, lambda u: a.T @ u, k, in_shape=(160,), steps=40
        )
    )(getkey())
    assert float(top.value) == pytest.approx(exact, rel=2e-3)
    # A Ritz value never exceeds the top eigenvalue of A^T A (up to float32 round-off).
    assert float(top.value) <= exact * (1 + 1e-5)
    # With as many steps as dimensions the Krylov space is everything: exact to round-off.
    full = gj.matrix_free.lanczos_sigma_max(
        lambda v: a @ v, lambda u: a.T @ u, getkey(), in_shape=(160,), steps=400
    )
    assert full.steps == 160
    assert float(full.value) == pytest.approx(exact, rel=1e-4)


def test_ritz_values_of_bases_of_different_sizes_share_one_solve(getkey):
    # Exact reference: float64 eigvalsh. A 20 x 20 operator with 20 steps spans its whole
    # space, so its top Ritz value is its top eigenvalue; a batch of three 40 x 40 operators
    # with 20 steps gives lower bounds whose residual bounds the distance to an eigenvalue.
    def sym(key, n, batch=()):
        g = jax.random.normal(key, (*batch, n, n)) / math.sqrt(n)
        return g @ jnp.swapaxes(g, -1, -2)

    small, large = sym(getkey(), 20), sym(getkey(), 40, (3,))
    basis = gj.matrix_free.lanczos_basis
    k_small = basis(lambda v: small @ v, getkey(), size=20, steps=20)
    k_large = jax.vmap(lambda a, k: basis(lambda v: a @ v, k, size=40, steps=20))(
        large, jax.random.split(getkey(), 3)
    )
    top_small, top_large = gj.matrix_free.ritz_top_eigenvalue(k_small, k_large)
    exact_small = np.linalg.eigvalsh(np.asarray(small, np.float64))[-1]
    np.testing.assert_allclose(float(top_small.value), exact_small, rtol=1e-4)
    assert top_large.value.shape == (3,)
    for a, theta, res in zip(large, top_large.value, top_large.error, strict=True):
        evals = np.linalg.eigvalsh(np.asarray(a, np.float64))
        assert theta <= evals[-1] * (1 + 1e-5)
        assert np.min(np.abs(evals - float(theta))) <= float(res) * 1.01 + 1e-5
    # A basis capped by a smaller operator (6 steps) shares the solve with 20-step ones.
    tiny = sym(getkey(), 6)
    k_tiny = basis(lambda v: tiny @ v, getkey(), size=6, steps=20)
    top_tiny, top_small2 = gj.matrix_free.ritz_top_eigenvalue(k_tiny, k_small)
    exact_tiny = np.linalg.eigvalsh(np.asarray(tiny, np.float64))[-1]
    np.testing.assert_allclose(float(top_tiny.value), exact_tiny, rtol=1e-4)
    assert float(top_tiny.error) < 1e-3 * exact_tiny
    np.testing.assert_allclose(float(top_small2.value), exact_small, rtol=1e-4)
    with pytest.raises(GradjaxInputError, match="bases"):
        gj.matrix_free.ritz_top_eigenvalue()


def test_layer_estimates_match_exact_spectra(getkey):
    net = gj.build(gj.NetConfig(depth=4, width=64, activation="tanh", sigma_w=1.4, sigma_b=0.2))
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (64,))
    est = jax.jit(
        lambda p, x, k: gj.layer_spectrum_estimates(net, p, x, key=k, probes=128, lanczos_steps=40)
    )(params, x, getkey())
    exact = gj.spectrum_summary(gj.layer_jacobians(net, params, x).all_layers())
    ms, se = np.asarray(est.mean_sq), np.asarray(est.mean_sq_stderr)
    assert np.all(np.abs(ms - np.asarray(exact.mean_sq)) < 4.5 * se)
    np.testing.assert_allclose(np.asarray(est.sigma_max), np.asarray(exact.sigma_max), rtol=1e-2)


def test_layers_in_turn_and_batched_agree(getkey, monkeypatch):
    # The CPU runs the hidden layers one at a time (lax.map), other backends as one batch
    # (vmap): the same probes and start vectors, so the same numbers up to rounding.
    net = gj.build(gj.NetConfig(depth=5, width=48, activation="tanh", sigma_w=1.3))
    params, x, key = net.init(getkey()), jax.random.normal(getkey(), (48,)), getkey()

    def estimate():
        return gj.layer_spectrum_estimates(net, params, x, key=key, probes=8, lanczos_steps=10)

    in_turn = estimate()
    monkeypatch.setattr(gj.matrix_free, "on_cpu", lambda: False)
    batched = estimate()
    for a, b in zip(jax.tree.leaves(in_turn), jax.tree.leaves(batched), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-6)


def test_narrow_input_layer_with_more_steps_than_inputs(getkey):
    # input_dim 4 < 10 Lanczos steps: the input layer's Krylov space is its whole input space,
    # so its sigma_max is exact; the hidden layers' bases are longer and share the solve.
    net = gj.build(gj.NetConfig(depth=3, width=24, input_dim=4, sigma_w=1.2))
    params, x = net.init(getkey()), jax.random.normal(getkey(), (4,))
    est = gj.layer_spectrum_estimates(net, params, x, key=getkey(), probes=4, lanczos_steps=10)
    jac = gj.layer_jacobians(net, params, x)
    exact = [
        np.linalg.svd(np.asarray(j, np.float64), compute_uv=False)[0]
        for j in [jac.first, *jac.hidden]
    ]
    np.testing.assert_allclose(float(est.sigma_max[0]), exact[0], rtol=1e-4)
    assert np.all(np.asarray(est.sigma_max) <= np.asarray(exact) * (1 + 1e-4))


def test_batchnorm_batch_map_estimates(getkey):
    # BatchNorm couples the batch: the estimates are those of the whole batch map, which
    # batch_layer_jacobians materialises.
    net = gj.build(gj.NetConfig(depth=3, width=16, activation="relu", norm="batch"))
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (3, 16))
    est = jax.jit(
        lambda p, x, k: gj.layer_spectrum_estimates(net, p, x, key=k, probes=64, lanczos_steps=48)
    )(params, x, getkey())
    exact = gj.spectrum_summary(gj.jacobians.batch_layer_jacobians(net, params, x).all_layers())
    ms, se = np.asarray(est.mean_sq), np.asarray(est.mean_sq_stderr)
    assert np.all(np.abs(ms - np.asarray(exact.mean_sq)) < 4.5 * se)
    np.testing.assert_allclose(np.asarray(est.sigma_max), np.asarray(exact.sigma_max), rtol=1e-3)
    with pytest.raises(GradjaxInputError, match="batch"):
        gj.layer_spectrum_estimates(net, params, x[0], key=getkey())


def test_probes_in_the_sweep_engine():
    # A linear network's layer Jacobians are sigma_w * W_base, and the sweep gives every
    # scale of a seed the same base weights and probe key: mean_sq must scale as sigma_w^2
    # exactly and sigma_max as sigma_w. Its mean-field chi_1 is sigma_w^2; a width-96
    # network measures it to a few percent (||W||_F^2 / N fluctuates by ~1/N per layer).
    net = gj.build(gj.NetConfig(depth=8, width=96, activation="linear"))
    probe = gj.probes.combine(
        spectra=gj.matrix_free_probe(net, probes=8, lanczos_steps=16),
        chi=gj.chi1_probe(net, probes=8),
    )
    res = gj.sweep(net, probe, seeds=2, sigma_w=[0.8, 1.2, 2.4], chunk=(2, 3), progress=False)
    ms, smax = res["spectra.mean_sq"], res["spectra.sigma_max"]
    assert ms.shape == (2, 3, 8)
    np.testing.assert_allclose(ms[:, 2] / ms[:, 1], 4.0, rtol=1e-5)
    np.testing.assert_allclose(smax[:, 1] / smax[:, 2], 0.5, rtol=1e-5)
    chi = res["chi.chi1"]
    np.testing.assert_allclose(chi / np.array([0.64, 1.44, 5.76])[None, :], 1.0, rtol=0.06)


def test_bad_input(getkey):
    net = gj.build(gj.NetConfig(depth=2, width=8))
    params = net.init(getkey())
    with pytest.raises(GradjaxInputError, match="probes"):
        gj.matrix_free_probe(net, probes=1)
    with pytest.raises(GradjaxInputError, match="x.shape"):
        gj.layer_spectrum_estimates(net, params, jnp.ones(5), key=getkey())
    with pytest.raises(GradjaxInputError, match="skip"):
        gj.empirical_chi1(net, params, jnp.ones(8), key=getkey(), skip=5)
