"""Residual stacks: identity at zero gain, the identity path of the gradient, forward variance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.nets import layout
from gradjax.utils.fitting import log_slope


def _batch(key, b, d, dtype=jnp.float32):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (b, d), dtype), jax.random.normal(ky, (b, 1), dtype)


def _he_relu_stack(**kw):
    """A config of eight residual ReLU blocks at He init (sigma_w^2 = 2)."""
    return gj.NetConfig(depth=8, activation="relu", sigma_w=2**0.5, **kw)


def _measured_second_moment(cfg, key):
    """E[a_l^2] per block of ``cfg``'s stack, averaged over 8 seeds of 16 examples."""
    prof = gj.residual.residual_profile(gj.build(cfg), key, batch=16, seeds=8)
    return prof, np.asarray(prof.second_moment).mean(0)


def test_skipinit_at_zero_gain_is_exactly_the_identity(getkey):
    net = gj.build(
        gj.NetConfig(
            depth=6, width=16, activation="relu", norm="batch", residual="skipinit", sigma_b=0.5
        )
    )
    params = net.init(getkey())
    x, y = _batch(getkey(), 5, 16)
    # One compiled function for both (compilation dominates the cost of this test).
    run = jax.jit(lambda p: (net.forward(p, x).act, gj.residual.identity_path(net, p, x, y)))
    acts, ip = run(params)
    # a_l = a_{l-1} + 0 * F(a_{l-1}): every hidden block passes its input through bit for bit.
    for l in range(1, 6):
        np.testing.assert_array_equal(acts[l], acts[0])
    np.testing.assert_array_equal(ip.branch, 0.0)
    np.testing.assert_array_equal(ip.total, ip.identity)
    np.testing.assert_allclose(ip.cosine, 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"residual_block": "pre", "norm": "batch"},
        {"residual_block": "pre", "branch_layers": 2, "norm": "layer"},
        {"residual_block": "act_branch", "norm": "batch"},
    ],
    ids=str,
)
def test_identity_path_decomposition_is_exact(x64, getkey, kw):
    # dL/da_l = dL/da_L + sum_{k>l} g dL/da_k dF_k/da_{k-1}: the right side is built from
    # per-block VJPs of the branches alone, independent of the network's backward pass
    # (jax.grad). Exact when nothing follows the addition.
    cfg = gj.NetConfig(
        depth=5,
        width=8,
        activation="tanh",
        residual="scaled",
        sigma_w=1.3,
        sigma_b=0.2,
        dtype="float64",
        **kw,
    )
    net = gj.build(cfg)
    params = net.init(getkey())
    x, y = _batch(getkey(), 4, 8, jnp.float64)
    run = jax.jit(
        lambda p: (
            gj.layer_gradients(net, p, x, y).activations,
            gj.residual.branch_path_sum(net, p, x, y),
            gj.residual.identity_path(net, p, x, y),
        )
    )
    grads, branch, ip = run(params)
    np.testing.assert_allclose(grads, grads[-1][None] + branch, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        ip.branch, np.linalg.norm(branch.reshape(5, -1), axis=-1), rtol=1e-10, atol=1e-12
    )
    assert float(np.max(ip.formula_error)) < 1e-12


def test_post_activation_breaks_the_identity_path(getkey):
    # The article's block phi(x + F(x)): the ReLU mask after each addition multiplies every
    # path, so identity + branch paths (the gradient of x_L = x_l + sum F) misses dL/da_l.
    # Control: the same decomposition computed for the identical pre-activation weights is
    # exact, so the miss is the mask's, not round-off.
    base = _he_relu_stack(width=64, residual="scaled", dtype="float32")
    key = getkey()
    x, y = _batch(getkey(), 16, 64)
    errors = {}
    for block in ("pre", "post"):
        net = gj.build(base.replace(residual_block=block))
        ip = jax.jit(lambda p, net=net: gj.residual.identity_path(net, p, x, y))(net.init(key))
        errors[block] = np.asarray(ip.formula_error)
    assert errors["pre"].max() < 1e-5
    assert errors["post"][-1] == 0.0  # the top block: dL/da_L itself
    # One mask between a_{L-1} and a_L zeroes about half of the units' identity path.
    assert errors["post"][-2] > 0.3
    assert errors["post"][0] > 0.5


def test_gradient_is_at_least_the_identity_path_term_and_linear_closed_forms(getkey):
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
        params = net.init(kp)
        ip = gj.residual.identity_path(net, params, x, y, loss=loss)
        return (ip.total / ip.identity) ** 2, jnp.mean(net.forward(params, x).act ** 2, (1, 2))

    r, m2 = ratio(jax.random.split(getkey(), seeds))
    expected = (1 + alpha**2) ** (depth - 1 - np.arange(depth))
    mean = np.asarray(r).mean(0)
    assert np.all(mean >= 1.0 - 1e-6)
    np.testing.assert_allclose(mean, expected, rtol=0.08)
    # Forward: E[a_l^2] = (1 + alpha^2 sigma_w^2)^(l-1) q_1 with q_1 = sigma_w^2 E[x^2] = 1.
    closed = gj.residual.linear_residual_variance(depth, alpha=alpha)
    np.testing.assert_allclose(np.asarray(m2).mean(0), closed, rtol=0.05)


def test_residual_theory_linear_matches_closed_form():
    # Quadrature recursion vs the closed form (1 + alpha^2 sigma_w^2)^(l-1) q_1 + bias terms.
    depth, alpha, sigma_w, sigma_b = 12, 0.7, 1.4, 0.3
    cfg = gj.NetConfig(
        depth=depth,
        width=8,
        activation="linear",
        residual="scaled",
        residual_alpha=alpha,
        sigma_w=sigma_w,
        sigma_b=sigma_b,
    )
    th = gj.residual.residual_theory(cfg)
    closed = gj.residual.linear_residual_variance(
        depth, alpha=alpha, sigma_w=sigma_w, sigma_b=sigma_b, first=sigma_w**2 + sigma_b**2
    )
    np.testing.assert_allclose(th.second_moment, closed, rtol=1e-5)
    growth = 1 + alpha**2 * sigma_w**2
    np.testing.assert_allclose(th.grad_ratio[0], growth ** (depth - 1), rtol=1e-5)
    assert np.all(np.abs(np.asarray(th.mean)) <= 1e-6 * np.sqrt(closed))  # E[a] = 0 by symmetry


def test_residual_theory_with_norm_grows_linearly():
    # With a norm the branch input is N(0, 1): linear phi adds alpha^2 per block, exactly.
    cfg = gj.NetConfig(depth=10, width=8, activation="linear", norm="layer", residual="plain")
    np.testing.assert_allclose(
        gj.residual.residual_theory(cfg).second_moment, np.arange(1, 11), rtol=1e-5
    )


def test_gain_profile_matches_theory_and_the_plain_config(getkey):
    # Wide (256) BatchNorm-tanh stacks, 4 seeds: measured E[a_l^2] for g = 1, 1/sqrt(L), 0
    # vs the mean-field recursion of residual_theory (the tolerance covers O(1/sqrt(N B))
    # fluctuations compounded over depth).
    key = getkey()
    base = gj.NetConfig(depth=16, width=256, activation="tanh", norm="batch")
    kinds = ("plain", "scaled", "skipinit")
    gains = jnp.array([1.0, base.replace(residual="scaled").alpha, 0.0])
    skip = gj.build(base.replace(residual="skipinit"))
    g = gj.residual.gain_profile(skip, key, gains=gains, batch=16, seeds=4)
    for i, kind in enumerate(kinds):
        measured = np.exp(np.log(np.asarray(g.second_moment[i])).mean(0))
        theory = gj.residual.residual_theory(base.replace(residual=kind)).second_moment
        np.testing.assert_allclose(measured, theory, rtol=0.12)
    # x + g F(x) at g = 1 with the same key is the plain block: the same weight draws (the
    # gain leaf is the only extra parameter), so the g = 1 row is the plain stack.
    k = getkey()
    p_skip = skip.init(k)
    p_plain = gj.build(base.replace(residual="plain")).init(k)
    hidden_skip, hidden_plain = layout.hidden_layers(p_skip), layout.hidden_layers(p_plain)
    assert set(hidden_skip) - set(hidden_plain) == {layout.GAIN}
    for leaf in hidden_plain:
        np.testing.assert_array_equal(hidden_skip[leaf], hidden_plain[leaf])


def test_bad_inputs_raise_clear_errors(getkey):
    with pytest.raises(gj.GradjaxInputError, match="residual"):
        gj.residual.residual_theory(gj.NetConfig(depth=3, width=4))
    with pytest.raises(gj.GradjaxInputError, match="residual_alpha"):
        gj.NetConfig(depth=3, width=4, residual="scaled", residual_alpha=-1.0)
    with pytest.raises(gj.GradjaxInputError, match="alpha"):
        gj.residual.linear_residual_variance(5, alpha=-0.1)
    plain = gj.build(gj.NetConfig(depth=3, width=4, residual="plain"))
    with pytest.raises(gj.GradjaxInputError, match="skipinit"):
        gj.residual.gain_profile(plain, getkey(), gains=[1.0], batch=2)
    bn = gj.build(gj.NetConfig(depth=3, width=4, norm="batch", residual="plain"))
    with pytest.raises(gj.GradjaxInputError, match="at least 2"):
        gj.residual.residual_profile(bn, getkey(), batch=1)
    with pytest.raises(gj.GradjaxInputError, match="residual"):
        gj.residual.branch_path_sum(gj.build(gj.NetConfig(depth=3, width=4)), None, None, None)


def test_pre_activation_he_relu_doubles_per_block(getkey):
    # Unscaled pre-activation ReLU stack at He init: the branch W relu(a) of a symmetric
    # stream a has E[F^2] = sigma_w^2 E[a^2] / 2 = E[a^2], so q doubles per block (exactly,
    # in expectation over the weights). Theory: 2 to quadrature precision; measurement
    # (width 256, 8 seeds): the fitted growth within 3%, each block within 10%, for one and
    # two weight layers per branch.
    for layers in (1, 2):
        cfg = _he_relu_stack(width=256, residual="plain", branch_layers=layers)
        th = np.asarray(gj.residual.residual_theory(cfg).second_moment)
        np.testing.assert_allclose(th[1:] / th[:-1], 2.0, rtol=1e-5)
        _, measured = _measured_second_moment(cfg, getkey())
        growth = float(np.exp(log_slope(np.arange(8), measured)))
        assert growth == pytest.approx(2.0, rel=0.03)
        np.testing.assert_allclose(measured, th, rtol=0.1)


def test_post_activation_theory_matches_measurement(getkey):
    # The article's ReLU(x + W x) at He init: the stream is >= 0, so the theory carries the
    # unit's law; growth tends to 2.40 per block (not 2). Forward within 10% per block,
    # gradient ratios (gradient independence with each unit's own mask chain) within 20%.
    cfg = _he_relu_stack(width=512, residual="plain", residual_block="post")
    th = gj.residual.residual_theory(cfg)
    q = np.asarray(th.second_moment)
    assert q[-1] / q[-2] == pytest.approx(2.40, abs=0.01)
    prof, measured = _measured_second_moment(cfg, getkey())
    np.testing.assert_allclose(measured, q, rtol=0.1)
    g2 = (np.asarray(prof.grad) ** 2).mean(0)
    np.testing.assert_allclose(g2 / g2[-1], np.asarray(th.grad_ratio), rtol=0.2)
