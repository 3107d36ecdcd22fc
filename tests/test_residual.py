"""Residual stacks: identity at zero gain, the identity path of the gradient, forward variance."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj


def _batch(key, b, d, dtype=jnp.float32):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (b, d), dtype), jax.random.normal(ky, (b, 1), dtype)


def test_skipinit_at_zero_gain_is_exactly_the_identity(getkey):
    net = gj.build(
        gj.NetConfig(
            depth=6, width=16, activation="relu", norm="batch", residual="skipinit", sigma_b=0.5
        )
    )
    params = net.init(getkey())
    x, y = _batch(getkey(), 5, 16)
    acts = net.forward(params, x).act
    # a_l = a_{l-1} + 0 * F(a_{l-1}): every hidden block passes its input through bit for bit.
    for l in range(1, 6):
        np.testing.assert_array_equal(acts[l], acts[0])
    ip = jax.jit(gj.identity_path, static_argnums=0)(net, params, x, y)
    np.testing.assert_array_equal(ip.branch, 0.0)
    np.testing.assert_array_equal(ip.total, ip.identity)
    np.testing.assert_allclose(ip.cosine, 1.0, rtol=1e-6)


def test_identity_path_decomposition_is_exact(x64, getkey):
    # dL/da_l = dL/da_L + sum_{k>l} g dL/da_k dF_k/da_{k-1}: the right side is built from
    # per-block VJPs of the branches alone, independent of the network's backward pass.
    net = gj.build(
        gj.NetConfig(
            depth=5,
            width=8,
            activation="tanh",
            norm="batch",
            residual="scaled",
            sigma_w=1.3,
            sigma_b=0.2,
            dtype="float64",
        )
    )
    params = net.init(getkey())
    x, y = _batch(getkey(), 4, 8, jnp.float64)
    grads = gj.layer_gradients(net, params, x, y).activations
    branch = gj.branch_path_sum(net, params, x, y)
    np.testing.assert_allclose(grads, grads[-1][None] + branch, rtol=1e-10, atol=1e-12)
    ip = gj.identity_path(net, params, x, y)
    np.testing.assert_allclose(
        ip.branch, np.linalg.norm(branch.reshape(5, -1), axis=-1), rtol=1e-10, atol=1e-12
    )


def test_gradient_is_at_least_the_identity_path_term(getkey):
    # Linear residual stack with a loss linear in the output, so dL/da_L does not depend on
    # the hidden weights. Closed form: E[||dL/da_l||^2 | dL/da_L] = ||dL/da_L||^2
    # (1 + alpha^2 sigma_w^2)^(L - l) >= ||dL/da_L||^2 (cross terms have zero mean).
    depth, alpha, seeds = 8, 0.5, 64
    net = gj.build(
        gj.NetConfig(
            depth=depth, width=64, activation="linear", residual="scaled", residual_alpha=alpha
        )
    )
    loss = lambda out, target: jnp.mean(out * target)

    @jax.jit
    @jax.vmap
    def ratio(key):
        kp, kx = jax.random.split(key)
        x, y = _batch(kx, 4, 64)
        ip = gj.identity_path(net, net.init(kp), x, y, loss=loss)
        return (ip.total / ip.identity) ** 2

    r = ratio(jax.random.split(getkey(), seeds))
    expected = (1 + alpha**2) ** (depth - 1 - np.arange(depth))
    mean = np.asarray(r).mean(0)
    assert np.all(mean >= 1.0 - 1e-6)
    np.testing.assert_allclose(mean, expected, rtol=0.08)


def test_residual_theory_linear_matches_closed_form():
    # Quadrature recursion vs the closed form (1 + alpha^2 sigma_w^2)^(l-1) q_1 + bias terms.
    cfg = gj.NetConfig(
        depth=12,
        width=8,
        activation="linear",
        residual="scaled",
        residual_alpha=0.7,
        sigma_w=1.4,
        sigma_b=0.3,
    )
    th = gj.residual_theory(cfg)
    closed = gj.linear_residual_variance(
        12, alpha=0.7, sigma_w=1.4, sigma_b=0.3, first=1.4**2 + 0.3**2
    )
    np.testing.assert_allclose(th.second_moment, closed, rtol=1e-5)
    np.testing.assert_allclose(th.grad_ratio[0], (1 + 0.49 * 1.96) ** 11, rtol=1e-5)
    assert np.all(np.abs(np.asarray(th.mean)) <= 1e-6 * np.sqrt(closed))  # E[a] = 0 by symmetry


def test_residual_theory_with_norm_grows_linearly():
    # With a norm the branch input is N(0, 1): linear phi adds alpha^2 per block, exactly.
    cfg = gj.NetConfig(depth=10, width=8, activation="linear", norm="layer", residual="plain")
    np.testing.assert_allclose(gj.residual_theory(cfg).second_moment, np.arange(1, 11), rtol=1e-5)


@pytest.mark.parametrize(
    "activation,norm,residual",
    [("linear", None, "plain"), ("tanh", "batch", "scaled")],
)
def test_measured_forward_variance_matches_theory(getkey, activation, norm, residual):
    # Wide (256) stacks, 4 seeds: measured E[a_l^2] vs the mean-field recursion (closed form
    # for linear). The tolerance covers O(1/sqrt(N B)) fluctuations compounded over depth.
    cfg = gj.NetConfig(depth=16, width=256, activation=activation, norm=norm, residual=residual)
    m = gj.residual_profile(gj.build(cfg), getkey(), batch=16, seeds=4)
    measured = np.exp(np.log(np.asarray(m.second_moment)).mean(0))
    np.testing.assert_allclose(measured, gj.residual_theory(cfg).second_moment, rtol=0.12)


def test_gain_profile_equals_the_plain_config(getkey):
    # x + g F(x) at g = 1 with the same key is the plain block: same weights, same numbers.
    key = getkey()
    base = gj.NetConfig(depth=6, width=32, activation="tanh", norm="layer")
    skip = gj.build(base.replace(residual="skipinit"))
    g = gj.gain_profile(skip, key, gains=jnp.array([1.0, 0.0]), batch=4, seeds=2)
    plain = gj.residual_profile(gj.build(base.replace(residual="plain")), key, batch=4, seeds=2)
    np.testing.assert_allclose(g.second_moment[0], plain.second_moment, rtol=1e-6)
    np.testing.assert_allclose(g.grad[0], plain.grad, rtol=1e-5)
    # g = 0: the forward second moment stays at the first block's.
    np.testing.assert_allclose(g.second_moment[1], g.second_moment[1][:, :1] * np.ones(6))


def test_identity_path_of_a_plain_stack_is_zero(getkey):
    net = gj.build(gj.NetConfig(depth=4, width=8))
    x, y = _batch(getkey(), 3, 8)
    ip = jax.jit(functools.partial(gj.identity_path, net))(net.init(getkey()), x, y)
    np.testing.assert_array_equal(ip.identity[:-1], 0.0)
    np.testing.assert_allclose(ip.branch[:-1], ip.total[:-1])


def test_bad_inputs_raise_clear_errors(getkey):
    with pytest.raises(gj.GradjaxInputError, match="residual"):
        gj.residual_theory(gj.NetConfig(depth=3, width=4))
    with pytest.raises(gj.GradjaxInputError, match="residual_alpha"):
        gj.NetConfig(depth=3, width=4, residual="scaled", residual_alpha=-1.0)
    with pytest.raises(gj.GradjaxInputError, match="alpha"):
        gj.linear_residual_variance(5, alpha=-0.1)
    plain = gj.build(gj.NetConfig(depth=3, width=4, residual="plain"))
    with pytest.raises(gj.GradjaxInputError, match="skipinit"):
        gj.gain_profile(plain, getkey(), gains=[1.0], batch=2)
    bn = gj.build(gj.NetConfig(depth=3, width=4, norm="batch", residual="plain"))
    with pytest.raises(gj.GradjaxInputError, match="at least 2"):
        gj.residual_profile(bn, getkey(), batch=1)
    with pytest.raises(gj.GradjaxInputError, match="residual"):
        gj.branch_path_sum(gj.build(gj.NetConfig(depth=3, width=4)), None, None, None)
