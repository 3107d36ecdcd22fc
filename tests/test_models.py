"""Networks: shapes, the block equations, the scale map (common random numbers), Flax NNX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj


def _reference_forward(params, x, act, *, residual_gain=0.0):
    """The network written out as a plain Python loop, independent of lax.scan."""
    a = act(x @ params["input"]["W"].T + params["input"]["b"])
    for l in range(params["hidden"]["W"].shape[0]):
        h = act(a @ params["hidden"]["W"][l].T + params["hidden"]["b"][l])
        a = a + residual_gain * h if residual_gain else h
    return a @ params["readout"]["W"].T + params["readout"]["b"]


@pytest.mark.parametrize("residual", [None, "plain", "scaled"])
def test_forward_matches_a_python_loop(getkey, residual):
    cfg = gj.NetConfig(depth=5, width=12, in_dim=7, out_dim=3, sigma_b=0.3, residual=residual)
    net = gj.build(cfg)
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (4, 7))
    expected = _reference_forward(params, x, jnp.tanh, residual_gain=cfg.alpha)
    np.testing.assert_allclose(net.apply(params, x), expected, rtol=2e-5, atol=2e-6)


def test_shapes_and_single_example(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8, in_dim=5, out_dim=2))
    params = net.init(getkey())
    assert params["hidden"]["W"].shape == (2, 8, 8)
    x = jax.random.normal(getkey(), (6, 5))
    trace = net.forward(params, x)
    assert trace.preact.shape == (3, 6, 8) and trace.output.shape == (6, 2)
    np.testing.assert_allclose(net.apply(params, x[0]), net.apply(params, x)[0], rtol=1e-6)


def test_scale_is_linear_in_sigma_with_common_random_numbers(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8, init="he"))
    base = net.init_base(getkey())
    p1 = net.scale(base, sigma_w=1.0, sigma_b=0.5)
    p3 = net.scale(base, sigma_w=3.0, sigma_b=1.5)
    np.testing.assert_allclose(p3["hidden"]["W"], 3 * p1["hidden"]["W"], rtol=1e-6)
    np.testing.assert_allclose(p3["input"]["b"], 3 * p1["input"]["b"], rtol=1e-6)
    # He: the variance of W is sigma_w^2 * 2 / fan_in.
    big = gj.build(gj.NetConfig(depth=2, width=512, init="he")).init(getkey())
    assert float(jnp.var(big["hidden"]["W"])) == pytest.approx(2 / 512, rel=0.03)


@pytest.mark.parametrize("norm", [None, "layer"])
def test_lazy_scales_match_the_python_loop_and_materialize(getkey, norm):
    cfg = gj.NetConfig(depth=5, width=12, in_dim=7, out_dim=3, init="he", norm=norm)
    net = gj.build(cfg)
    base = net.init_base(getkey())
    lazy = net.scale(base, sigma_w=1.7, sigma_b=0.4, lazy=True)
    eager = net.scale(base, sigma_w=1.7, sigma_b=0.4)
    assert net.is_lazy(lazy) and not net.is_lazy(eager)
    assert lazy["hidden"]["W"] is base["hidden"]["W"]  # the weights themselves are untouched
    x = jax.random.normal(getkey(), (4, 7))
    np.testing.assert_allclose(net.apply(lazy, x), net.apply(eager, x), rtol=2e-5, atol=2e-6)
    if norm is None:
        reference = _reference_forward(eager, x, jnp.tanh)
        np.testing.assert_allclose(net.apply(lazy, x), reference, rtol=2e-5, atol=2e-6)
    folded = net.materialize(lazy)
    for group in ("input", "hidden", "readout"):
        np.testing.assert_allclose(folded[group]["W"], eager[group]["W"], rtol=1e-6)
        np.testing.assert_allclose(folded[group]["b"], eager[group]["b"], rtol=1e-6)
    assert not net.is_lazy(folded)


def test_functions_that_read_weights_refuse_lazy_params(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8))
    lazy = net.scale(net.init_base(getkey()), lazy=True)
    x = jax.random.normal(getkey(), (8,))
    with pytest.raises(gj.GradjaxInputError, match="lazy scales.*materialize"):
        gj.chain_rule_check(net, lazy, x, jnp.zeros((1,)))
    with pytest.raises(gj.GradjaxInputError, match="layer_gradients"):
        gj.layer_gradient_norms(net, lazy, x[None], jnp.zeros((1, 1)))


def test_orthogonal_linear_net_is_an_isometry_times_gain(getkey):
    net = gj.build(
        gj.NetConfig(depth=6, width=16, activation="linear", init="orthogonal", sigma_w=1.3)
    )
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (16,))
    a_last = net.forward(params, x).act[-1]
    assert float(jnp.linalg.norm(a_last)) == pytest.approx(
        1.3**6 * float(jnp.linalg.norm(x)), rel=1e-5
    )


def test_batchnorm_output_is_standardised(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=16, norm="batch", sigma_w=3.0))
    params = net.init(getkey())
    u = net.forward(params, jax.random.normal(getkey(), (32, 16))).normed
    np.testing.assert_allclose(jnp.mean(u, axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(u, axis=1), 1.0, rtol=1e-3)


def test_batchnorm_rejects_single_example(getkey):
    net = gj.build(gj.NetConfig(depth=2, width=4, norm="batch"))
    params = net.init(getkey())
    with pytest.raises(gj.GradjaxInputError, match="batch of at least 2"):
        net.apply(params, jnp.ones((1, 4)))


def test_skipinit_at_zero_gain_is_identity_after_first_block(getkey):
    net = gj.build(gj.NetConfig(depth=5, width=8, residual="skipinit"))
    params = net.init(getkey())
    trace = net.forward(params, jax.random.normal(getkey(), (3, 8)))
    for l in range(1, 5):
        np.testing.assert_array_equal(trace.act[l], trace.act[0])


def test_bad_input_shape_is_named(getkey):
    net = gj.build(gj.NetConfig(depth=2, width=4, in_dim=3))
    with pytest.raises(gj.GradjaxInputError, match=r"x.shape=\(2, 4\).*\(batch, 3\)"):
        net.apply(net.init(getkey()), jnp.ones((2, 4)))


def test_nnx_round_trip(getkey):
    from flax import nnx

    net = gj.build(gj.NetConfig(depth=3, width=8, norm="layer", residual="skipinit"))
    params = net.init(getkey())
    module = net.to_nnx(params)
    x = jax.random.normal(getkey(), (2, 8))
    np.testing.assert_allclose(module(x), net.apply(params, x), rtol=1e-6)
    graphdef, state = nnx.split(module)
    back = gj.from_nnx(nnx.merge(graphdef, state))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, back, params))
    # NNX sees every leaf as a trainable parameter.
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))
    assert n_params == sum(x.size for x in jax.tree.leaves(params))


def test_float64_needs_x64():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 already enabled in this process")
    net = gj.build(gj.NetConfig(depth=2, width=4, dtype="float64"))
    with pytest.raises(gj.GradjaxInputError, match="jax_enable_x64"):
        net.init(jax.random.key(0))
