"""Layer Jacobians and the chain rule (claims C1, C2), against closed forms and jacrev."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import gradjax as gj
from gradjax.nets import layout


def test_relu_factor_is_indicator_times_weight(getkey):
    # Closed form: J_l = diag(1[z_l > 0]) W_l for relu.
    net = gj.build(gj.NetConfig(depth=4, width=10, activation="relu", sigma_w=1.4, sigma_b=0.1))
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (10,))
    jac = gj.layer_jacobians(net, params, x)
    z = net.forward(params, x).preact
    for l in range(1, 4):
        expected = (z[l] > 0).astype(jnp.float32)[:, None] * layout.layer_weight(params, l)
        np.testing.assert_allclose(jac.hidden[l - 1], expected, rtol=1e-6, atol=1e-7)


def test_orthogonal_linear_product_has_all_singular_values_gain_to_depth(getkey):
    depth, gain = 8, 1.1
    net = gj.build(
        gj.NetConfig(depth=depth, width=24, activation="linear", init="orthogonal", sigma_w=gain)
    )
    params = net.init(getkey())
    prod = gj.jacobians.chain_product(
        gj.layer_jacobians(net, params, jax.random.normal(getkey(), (24,)))
    )
    np.testing.assert_allclose(gj.singular_values(prod), gain**depth, rtol=1e-5)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    depth=st.integers(1, 5),
    width=st.integers(1, 6),
    input_dim=st.integers(1, 6),
    activation=st.sampled_from(["tanh", "relu", "sigmoid", "elu", "linear"]),
    residual=st.sampled_from([None, "plain", "scaled"]),
    block=st.sampled_from([("pre", 1), ("pre", 2), ("post", 1), ("post", 2), ("act_branch", 1)]),
    sigma_w=st.floats(0.3, 2.5),
    seed=st.integers(0, 2**16),
)
def test_chain_product_equals_jacrev_of_the_whole_net(
    depth, width, input_dim, activation, residual, block, sigma_w, seed
):
    kind, layers = block if residual else ("pre", 1)
    net = gj.build(
        gj.NetConfig(
            depth=depth,
            width=width,
            input_dim=input_dim,
            activation=activation,
            residual=residual,
            residual_block=kind,
            branch_layers=layers,
            sigma_w=sigma_w,
            sigma_b=0.1,
        )
    )

    # One compiled program per example: every example has new shapes, and op-by-op
    # execution would compile each of its many small operations separately.
    @jax.jit
    def product_and_direct(key):
        params = net.init(key)
        x = jax.random.normal(jax.random.fold_in(key, 1), (input_dim,))
        product = gj.jacobians.chain_product(gj.layer_jacobians(net, params, x))
        direct = jax.jacrev(lambda v: net.forward(params, v).act[-1])(x)
        return product, direct

    product, direct = product_and_direct(jax.random.key(seed))
    np.testing.assert_allclose(
        product, direct, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(direct)) + 1e-30)
    )


def test_chain_rule_check_is_at_round_off_in_float64(x64):
    for residual in (None, "plain", "skipinit"):
        block = "pre" if residual is None else "act_branch"  # the blocks diag(phi') W covers
        cfg = gj.NetConfig(
            depth=6, width=9, sigma_w=1.3, sigma_b=0.2, residual=residual, dtype="float64"
        )
        net = gj.build(cfg.replace(residual_block=block))
        params = net.init(jax.random.key(0))
        if residual == "skipinit":
            params = layout.with_residual_gain(params, 0.4)
        x = jax.random.normal(jax.random.key(1), (9,), jnp.float64)
        check = gj.chain_rule_check(net, params, x, jnp.ones((1,), jnp.float64))
        assert float(check.product_error) < 1e-13
        assert float(check.factor_error) < 1e-13
        assert float(check.gradient_error) < 1e-12
    # A pre-activation block's factor is I + g W diag(phi'(a)): the closed form refuses it.
    pre = gj.build(gj.NetConfig(depth=3, width=4, residual="plain", dtype="float64"))
    with pytest.raises(gj.GradjaxInputError, match="residual_block='pre'"):
        gj.chain_rule_check(pre, pre.init(jax.random.key(0)), jnp.ones(4), jnp.ones(1))


def test_float32_agrees_with_float64(x64):
    cfg = gj.NetConfig(depth=10, width=16, sigma_w=1.2)
    net32, net64 = gj.build(cfg), gj.build(cfg.replace(dtype="float64"))
    base64 = net64.init_base(jax.random.key(7))
    p64 = net64.scale(base64)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    x64_ = jax.random.normal(jax.random.key(8), (16,), jnp.float64)
    s32 = gj.singular_values(gj.layer_jacobians(net32, p32, x64_.astype(jnp.float32)).hidden)
    s64 = gj.singular_values(gj.layer_jacobians(net64, p64, x64_).hidden)
    # Largest singular values agree to float32 precision relative to sigma_max.
    np.testing.assert_allclose(s32, s64, atol=1e-5 * float(jnp.max(s64)))


def test_batch_jacobian_is_block_diagonal_without_batchnorm(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=4, norm="layer"))
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (3, 4))
    batch = gj.jacobians.batch_layer_jacobians(net, params, x)
    assert batch.batch_coupled and batch.hidden.shape == (2, 12, 12)
    per = jax.vmap(lambda v: gj.layer_jacobians(net, params, v).hidden)(x)
    for b in range(3):
        np.testing.assert_allclose(
            batch.hidden[:, 4 * b : 4 * b + 4, 4 * b : 4 * b + 4], per[b], rtol=1e-5, atol=1e-6
        )
    off = batch.hidden[:, 0:4, 4:8]
    np.testing.assert_array_equal(off, 0.0)


def test_batchnorm_couples_examples_and_needs_the_batch_jacobian(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=4, norm="batch"))
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (3, 4))
    with pytest.raises(gj.GradjaxInputError, match="batch_layer_jacobians"):
        gj.layer_jacobians(net, params, x[0])
    batch = gj.jacobians.batch_layer_jacobians(net, params, x)
    assert float(jnp.max(jnp.abs(batch.hidden[:, 0:4, 4:8]))) > 1e-3  # coupling is real
    # The product of batch Jacobians is still the Jacobian of the batch map.
    direct = jax.jacrev(lambda v: net.forward(params, v).act[-1])(x).reshape(12, 12)
    np.testing.assert_allclose(gj.jacobians.chain_product(batch), direct, rtol=1e-4, atol=1e-5)


def test_jacobian_picks_mode_by_shape():
    w = jnp.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(gj.jacobians.jacobian(lambda v: w @ v, jnp.ones(4)), w)
    np.testing.assert_allclose(gj.jacobians.jacobian(lambda v: w.T @ v, jnp.ones(3)), w.T)


def test_bad_inputs():
    net = gj.build(gj.NetConfig(depth=2, width=4))
    params = net.init(jax.random.key(0))
    with pytest.raises(gj.GradjaxInputError, match="one example"):
        gj.layer_jacobians(net, params, jnp.ones((2, 4)))
    with pytest.raises(gj.GradjaxInputError, match="to='middle'"):
        gj.io_jacobian(net, params, jnp.ones(4), to="middle")


def test_chain_rule_by_hand_equals_jax_grad_for_any_block(getkey):
    # Literal chain rule with exact layer Jacobians vs reverse-mode autodiff, incl. LayerNorm
    # and residual blocks whose factors are not diag(phi') W.
    net = gj.build(gj.NetConfig(depth=6, width=8, norm="layer", residual="scaled", sigma_w=1.5))
    params = net.init(getkey())
    x, y = jax.random.normal(getkey(), (8,)), jnp.ones((1,))
    by_hand = gj.jacobians.chain_rule_activation_gradients(net, params, x, y)
    auto = gj.layer_gradients(net, params, x[None], y[None]).activations[:, 0]
    np.testing.assert_allclose(by_hand, auto, rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(auto))))


def test_spectrum_probe_closed_form_matches_autodiff_spectra(getkey):
    # The probe takes the closed form diag(phi') W (+ I) for norm-free nets; it must give the
    # spectra of the autodiff Jacobians.
    for kw in ({}, {"residual": "scaled", "residual_block": "post", "branch_layers": 2}):
        net = gj.build(gj.NetConfig(depth=5, width=12, sigma_w=1.7, **kw))
        params, key = net.init(getkey()), getkey()
        got = gj.probes.spectrum_probe(net)(params, key)
        x = jax.random.normal(key, (12,))
        want = gj.spectrum_summary(gj.layer_jacobians(net, params, x).hidden)
        np.testing.assert_allclose(got["hidden"].sigma_max, want.sigma_max, rtol=1e-5)
        np.testing.assert_allclose(got["hidden"].mean_sq, want.mean_sq, rtol=1e-5)


@pytest.mark.parametrize(
    ("block", "layers"), [("pre", 1), ("pre", 2), ("post", 1), ("post", 2), ("act_branch", 1)]
)
def test_closed_form_factors_of_every_residual_block(x64, block, layers):
    cfg = gj.NetConfig(
        depth=4,
        width=6,
        input_dim=5,
        activation="tanh",
        sigma_w=1.4,
        sigma_b=0.3,
        residual="skipinit",
        residual_block=block,
        branch_layers=layers,
        dtype="float64",
    )
    net = gj.build(cfg)
    params = layout.with_residual_gain(net.init(jax.random.key(3)), 0.8)
    x = jax.random.normal(jax.random.key(4), (5,), jnp.float64)
    formula = gj.jacobians.expected_factors(net, params, x)
    auto = gj.layer_jacobians(net, params, x)
    np.testing.assert_allclose(formula.first, auto.first, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(formula.hidden, auto.hidden, rtol=1e-12, atol=1e-13)
