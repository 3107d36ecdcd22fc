"""Networks: shapes, the block equations, the scale map (common random numbers), Flax NNX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.meanfield.activations import get_activation
from gradjax.nets import layout
from gradjax.nets.models import flax_module


def _reference_forward(cfg, params, x):
    """The network written out as a plain Python loop, independent of lax.scan and Net.block."""
    act = get_activation(cfg.activation).fn

    def norm(z, p, suffix=""):
        if cfg.norm is None:
            return z
        mu, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
        return (z - mu) / jnp.sqrt(var + cfg.norm_eps) * p["gamma" + suffix] + p["beta" + suffix]

    lin = lambda p, a, w="W", b="b": a @ p[w].T + p[b]
    p0, two = layout.layer(params, 0), cfg.branch_layers == 2
    if cfg.residual is not None and cfg.residual_block == "pre":
        a = lin(p0, x)  # the linear stem of a pre-activation stack
    else:
        a = act(norm(lin(p0, x), p0))
    for l in range(1, cfg.depth):
        p = layout.layer(params, l)
        g = p["gain"] if cfg.residual == "skipinit" else cfg.alpha
        if cfg.residual is None:
            a = act(norm(lin(p, a), p))
        elif cfg.residual_block == "pre":
            h = lin(p, act(norm(a, p)))
            h = lin(p, act(norm(h, p, "2")), "W2", "b2") if two else h
            a = a + g * h
        elif cfg.residual_block == "post":
            h = norm(lin(p, a), p)
            h = norm(lin(p, act(h), "W2", "b2"), p, "2") if two else h
            a = act(a + g * h)
        else:
            a = a + g * act(norm(lin(p, a), p))
    return lin(layout.readout_layer(params), a)


CONFIGS = [
    {},
    {"residual": "plain"},
    {"residual": "scaled", "branch_layers": 2, "norm": "layer"},
    {"residual": "plain", "residual_block": "post", "activation": "relu"},
    {"residual": "skipinit", "residual_block": "post", "branch_layers": 2, "norm": "layer"},
    {"residual": "scaled", "residual_block": "act_branch"},
]


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_forward_matches_a_python_loop(getkey, kw):
    cfg = gj.NetConfig(depth=5, width=12, input_dim=7, out_dim=3, sigma_b=0.3, **kw)
    net = gj.build(cfg)
    params = net.init(getkey())
    if cfg.residual == "skipinit":
        params = layout.with_residual_gain(params, 0.7)  # a non-zero gain exercises the branch
    x = jax.random.normal(getkey(), (4, 7))
    expected = _reference_forward(cfg, params, x)
    np.testing.assert_allclose(net.apply(params, x), expected, rtol=2e-5, atol=2e-5)


def test_shapes_and_single_example(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8, input_dim=5, out_dim=2))
    params = net.init(getkey())
    assert layout.hidden_weights(params).shape == (2, 8, 8)
    x = jax.random.normal(getkey(), (6, 5))
    trace = net.forward(params, x)
    assert trace.preact.shape == (3, 6, 8) and trace.output.shape == (6, 2)
    np.testing.assert_allclose(net.apply(params, x[0]), net.apply(params, x)[0], rtol=1e-6)


def test_scale_is_linear_in_sigma_with_common_random_numbers(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8, init="he"))
    base = net.init_base(getkey())
    p1 = net.scale(base, sigma_w=1.0, sigma_b=0.5)
    p3 = net.scale(base, sigma_w=3.0, sigma_b=1.5)
    np.testing.assert_allclose(layout.hidden_weights(p3), 3 * layout.hidden_weights(p1), rtol=1e-6)
    np.testing.assert_allclose(
        layout.layer_weight(p3, 0, "b"), 3 * layout.layer_weight(p1, 0, "b"), rtol=1e-6
    )
    # He: the variance of W is sigma_w^2 * 2 / fan_in.
    big = gj.build(gj.NetConfig(depth=2, width=512, init="he")).init(getkey())
    assert float(jnp.var(layout.hidden_weights(big))) == pytest.approx(2 / 512, rel=0.03)


@pytest.mark.parametrize(
    "kw", [{}, {"norm": "layer"}, {"residual": "plain", "branch_layers": 2}], ids=str
)
def test_lazy_scales_match_the_python_loop_and_materialize(getkey, kw):
    cfg = gj.NetConfig(depth=5, width=12, input_dim=7, out_dim=3, init="he", **kw)
    net = gj.build(cfg)
    base = net.init_base(getkey())
    lazy = net.scale(base, sigma_w=1.7, sigma_b=0.4, lazy=True)
    eager = net.scale(base, sigma_w=1.7, sigma_b=0.4)
    assert net.is_lazy(lazy) and not net.is_lazy(eager)
    # The weights themselves are untouched.
    assert layout.hidden_weights(lazy) is layout.hidden_weights(base)
    x = jax.random.normal(getkey(), (4, 7))
    np.testing.assert_allclose(net.apply(lazy, x), net.apply(eager, x), rtol=2e-5, atol=2e-6)
    reference = _reference_forward(cfg, eager, x)
    np.testing.assert_allclose(net.apply(lazy, x), reference, rtol=2e-5, atol=2e-5)
    folded = net.materialize(lazy)
    for a, b in zip(jax.tree.leaves(folded), jax.tree.leaves(eager), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
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
    net = gj.build(gj.NetConfig(depth=2, width=4, input_dim=3))
    with pytest.raises(gj.GradjaxInputError, match=r"x.shape=\(2, 4\).*\(batch, 3\)"):
        net.apply(net.init(getkey()), jnp.ones((2, 4)))


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_flax_module_matches_the_pure_path(getkey, kw):
    from flax import nnx

    cfg = gj.NetConfig(depth=4, width=8, sigma_b=0.2, **kw)
    key = getkey()
    net, module = gj.build(cfg), flax_module(cfg, key)
    params = net.init(key)
    if cfg.residual == "skipinit":
        params = layout.with_residual_gain(params, 0.5)
        module = net.to_nnx(params)
    x = jax.random.normal(getkey(), (3, 8))
    np.testing.assert_allclose(module(x), net.apply(params, x), rtol=1e-6, atol=1e-6)
    # Gradients: nnx.grad through the module against jax.grad of the pure function.
    grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(module)
    pure = jax.grad(lambda p: jnp.sum(jnp.sin(net.apply(p, x))))(params)
    got = gj.from_nnx(nnx.merge(nnx.graphdef(module), grads))
    assert jax.tree.structure(got) == jax.tree.structure(pure)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(pure), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Round trip through nnx.split/merge, and NNX sees every leaf as a parameter.
    back = gj.from_nnx(nnx.merge(*nnx.split(module)))
    assert jax.tree.all(jax.tree.map(jnp.array_equal, back, params))
    n_params = sum(v.size for v in jax.tree.leaves(nnx.state(module, nnx.Param)))
    assert n_params == sum(v.size for v in jax.tree.leaves(params))


def test_flax_module_blocks_are_seen_by_the_model_boundary(getkey):
    # One submodule per block: the boundary finds every block of the stack, in order.
    from gradjax import boundary

    cfg = gj.NetConfig(depth=4, width=8, residual="plain", residual_block="post")
    x = jax.random.normal(getkey(), (3, 8))
    blocks = boundary.wrap(flax_module(cfg, getkey())).blocks(x)
    assert [b.name for b in blocks] == [f"blocks/{i}" for i in range(4)]


def test_float64_needs_x64():
    if jax.config.jax_enable_x64:
        pytest.skip("x64 already enabled in this process")
    net = gj.build(gj.NetConfig(depth=2, width=4, dtype="float64"))
    with pytest.raises(gj.GradjaxInputError, match="jax_enable_x64"):
        net.init(jax.random.key(0))
