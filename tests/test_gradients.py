"""Per-layer gradient norms: jax.grad against central finite differences in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.nets import layout


def test_grad_matches_central_differences_float64(x64):
    cfg = gj.NetConfig(
        depth=4, width=6, input_dim=3, out_dim=2, sigma_w=1.4, sigma_b=0.2, dtype="float64"
    )
    net = gj.build(cfg)
    params = net.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (5, 2), jnp.float64)
    grads = gj.layer_gradients(net, params, x, y)
    loss = jax.jit(lambda p: gj.mse_loss(net.apply(p, x), y))
    h = 1e-6
    rng = np.random.default_rng(0)
    for group, leaf in [("input", "W"), ("hidden", "W"), ("hidden", "b"), ("readout", "W")]:
        arr = np.asarray(params[group][leaf])
        for _ in range(4):
            idx = tuple(rng.integers(0, s) for s in arr.shape)
            bump = lambda d, idx=idx, group=group, leaf=leaf: jax.tree.map(
                lambda v: v,
                {**params, group: {**params[group], leaf: params[group][leaf].at[idx].add(d)}},
            )
            fd = (loss(bump(h)) - loss(bump(-h))) / (2 * h)
            assert float(grads.params[group][leaf][idx]) == pytest.approx(
                float(fd), rel=1e-6, abs=1e-10
            )


def test_activation_gradient_matches_finite_difference_on_perturbation(x64):
    net = gj.build(gj.NetConfig(depth=3, width=5, dtype="float64", sigma_w=1.2))
    params = net.init(jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (2, 5), jnp.float64)
    y = jnp.zeros((2, 1), jnp.float64)
    g = gj.layer_gradients(net, params, x, y).activations
    eps = jnp.zeros((3, 2, 5), jnp.float64)
    f = jax.jit(lambda e: gj.mse_loss(net.forward(params, x, perturbations=e).output, y))
    h = 1e-6
    for idx in [(0, 0, 1), (1, 1, 4), (2, 0, 0)]:
        fd = (f(eps.at[idx].set(h)) - f(eps.at[idx].set(-h))) / (2 * h)
        assert float(g[idx]) == pytest.approx(float(fd), rel=1e-6, abs=1e-12)


def test_norms_are_frobenius_norms_of_the_gradients(getkey):
    net = gj.build(gj.NetConfig(depth=4, width=8))
    params = net.init(getkey())
    x, y = jax.random.normal(getkey(), (6, 8)), jax.random.normal(getkey(), (6, 1))
    full = gj.layer_gradients(net, params, x, y)
    norms = gj.layer_gradient_norms(net, params, x, y)
    np.testing.assert_allclose(
        norms.weights[2], np.linalg.norm(layout.layer_weight(full.params, 2)), rtol=1e-6
    )
    np.testing.assert_allclose(norms.activations[0], np.linalg.norm(full.activations[0]), rtol=1e-6)


def test_deep_sigmoid_vanishes_and_large_relu_explodes(getkey):
    # ||dL/da_l|| shrinks towards the input for sigmoid at sigma_w = 1 (chi_1 < 1) and grows
    # for relu at sigma_w^2 = 4 (chi_1 = 2), as the article says.
    x = jax.random.normal(getkey(), (16, 64))
    y = jnp.zeros((16, 1))
    for act, sw, vanishes in [("sigmoid", 1.0, True), ("relu", 2.0, False)]:
        net = gj.build(gj.NetConfig(depth=20, width=64, activation=act, sigma_w=sw))
        g = gj.layer_gradient_norms(net, net.init(getkey()), x, y).activations
        # chi_1^(19/2) is ~1e-12 for sigmoid and 2^9.5 ~ 724 for relu (finite width: less).
        assert (g[0] < 1e-6 * g[-1]) if vanishes else (g[0] > 1e2 * g[-1])


def test_xent_and_bad_loss(getkey):
    net = gj.build(gj.NetConfig(depth=2, width=4, out_dim=3))
    params = net.init(getkey())
    x = jnp.ones((2, 4))
    g = gj.layer_gradient_norms(net, params, x, jnp.array([0, 2]), loss="xent")
    assert g.weights.shape == (2,)
    with pytest.raises(gj.GradjaxInputError, match="loss='hinge'"):
        gj.layer_gradient_norms(net, params, x, jnp.zeros((2, 3)), loss="hinge")
    with pytest.raises(gj.GradjaxInputError, match="loss output shape"):
        gj.layer_gradient_norms(net, params, x, jnp.zeros((2, 3)), loss=lambda o, t: o - t)


def test_jitted_and_vmapped(getkey):
    net = gj.build(gj.NetConfig(depth=3, width=8))
    keys = jax.random.split(getkey(), 3)
    x, y = jnp.ones((4, 8)), jnp.zeros((4, 1))
    f = jax.jit(jax.vmap(lambda k: gj.layer_gradient_norms(net, net.init(k), x, y).weights))
    batched = f(keys)
    for i in range(3):
        single = gj.layer_gradient_norms(net, net.init(keys[i]), x, y).weights
        np.testing.assert_allclose(batched[i], single, rtol=1e-5)
