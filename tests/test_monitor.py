"""Tests for gradjax.monitor: module grouping, in-jit recording, history and plot."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import gradjax as gj


def test_module_group_norms_linen_layout():
    grads = {
        "Dense_0": {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.ones(3)},
        "Block_0": {"Dense_0": {"kernel": jnp.ones((3, 3))}},
        "scale": jnp.full((4,), 0.5),
    }
    norms = gj.module_group_norms(grads)
    assert set(norms) == {"Dense_0", "Block_0/Dense_0", "scale"}
    # Closed form: sqrt(6 * 4 + 3), sqrt(9), sqrt(4 * 0.25).
    assert float(norms["Dense_0"]) == pytest.approx(math.sqrt(27.0))
    assert float(norms["Block_0/Dense_0"]) == pytest.approx(3.0)
    assert float(norms["scale"]) == pytest.approx(1.0)


def test_module_group_norms_nnx_state_and_stacked_layers(getkey):
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([nnx.Linear(4, 4, rngs=rngs) for _ in range(3)])

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    norms = gj.module_group_norms(state)
    assert sorted(norms) == ["blocks/0", "blocks/1", "blocks/2"]
    b1 = state["blocks"][1]
    expect = jnp.sqrt(jnp.sum(b1["kernel"][...] ** 2) + jnp.sum(b1["bias"][...] ** 2))
    assert float(norms["blocks/1"]) == pytest.approx(float(expect), rel=1e-6)
    stacked = {"hidden": {"W": jnp.arange(2 * 4.0).reshape(2, 2, 2), "b": jnp.ones((2, 2))}}
    norms = gj.module_group_norms(stacked)
    # Layer 1: W = [[4, 5], [6, 7]], b = [1, 1]: sqrt(16 + 25 + 36 + 49 + 2).
    assert float(norms["hidden/1"]) == pytest.approx(math.sqrt(128.0))


def _net_problem(key, depth=5, width=16):
    net = gj.build(gj.NetConfig(depth=depth, width=width, activation="tanh", sigma_w=1.5))
    kp, kx, ky = jax.random.split(key, 3)
    x = jax.random.normal(kx, (32, width))
    y = jax.random.normal(ky, (32, 1))
    return net, net.init(kp), x, y


def test_monitor_records_exact_per_layer_norms_inside_a_jitted_scan(getkey):
    net, params, x, y = _net_problem(getkey())
    tx = gj.monitor(optax.sgd(0.05))

    def loss(p):
        return gj.mse_loss(net.apply(p, x), y)

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), gj.latest_norms(s)

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=6))
    (final, _), stacked = run(params)
    history = gj.NormHistory.from_stacked(stacked)
    assert history.names == ("hidden/0", "hidden/1", "hidden/2", "hidden/3", "input", "readout")
    # Independent: step 0's gradient through gradjax.layer_gradient_norms (W and b per block).
    ref = gj.layer_gradient_norms(net, params, x, y)
    expect = np.hypot(np.asarray(ref.weights[1:]), np.asarray(ref.biases[1:]))
    got = [history.norms[f"hidden/{i}"][0] for i in range(4)]
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    # The monitor changes nothing: same trajectory as plain SGD.
    plain = optax.sgd(0.05)

    def plain_step(carry, _):
        p, s = carry
        updates, s = plain.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, updates), s), None

    (ref_final, _), _ = jax.jit(
        lambda p: jax.lax.scan(plain_step, (p, plain.init(p)), None, length=6)
    )(params)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(ref_final), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Global norm of step 0 = the root-sum-square of all gradient leaves.
    g0 = jax.grad(loss)(params)
    total = math.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(g0)))
    assert history.global_norms()[0] == pytest.approx(total, rel=1e-5)


def test_monitored_step_does_not_recompile(getkey):
    net, params, x, y = _net_problem(getkey(), depth=3, width=8)
    tx = gj.monitor(optax.sgd(1e-3))  # (optax.adam trips strict dtype promotion)
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        g = jax.grad(lambda q: gj.mse_loss(net.apply(q, x), y))(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    state = tx.init(params)
    params, state = step(params, state)
    params, state = step(params, state)
    assert len(traces) == 1
    assert set(gj.latest_norms(state)) >= {"input", "readout"}


def test_monitor_vmaps_over_seeds(getkey):
    net, params, x, y = _net_problem(getkey(), depth=3, width=8)
    tx = gj.monitor()
    seeds = jax.vmap(net.init)(jax.random.split(getkey(), 3))

    def norms(p):
        g = jax.grad(lambda q: gj.mse_loss(net.apply(q, x), y))(p)
        _, s = tx.update(g, tx.init(p), p)
        return gj.latest_norms(s)

    norms = jax.jit(norms)
    out = jax.jit(jax.vmap(norms))(seeds)
    assert out["readout"].shape == (3,)
    single = norms(jax.tree.map(lambda a: a[1], seeds))
    assert float(out["input"][1]) == pytest.approx(float(single["input"]), rel=1e-5)


def test_history_statistics_and_views():
    norms = {
        "layer_10": np.array([1.0, 2.0, np.nan, 4.0]),
        "layer_2": np.array([3.0, 4.0, 0.0, 3.0]),
    }
    history = gj.NormHistory.from_stacked(norms, steps=np.array([10, 20, 30, 40]))
    assert history.names == ("layer_2", "layer_10")  # natural order
    np.testing.assert_allclose(history.global_norms()[[0, 1, 3]], [math.sqrt(10), math.sqrt(20), 5])
    assert history.first_nonfinite_step() == 30
    assert history.clip_threshold(50) == pytest.approx(
        np.percentile([math.sqrt(10), math.sqrt(20), 5], 50)
    )
    data = json.loads(json.dumps(history.to_dict()))
    assert data["norms"]["layer_10"][2] == "nan"
    fig = history.plot()
    assert fig.axes[0].get_yscale() == "log"
    states = [{"a": np.float32(1.0)}, {"a": np.float32(2.0)}]
    assert gj.NormHistory.from_states(states).global_norms().tolist() == [1.0, 2.0]


def test_bad_inputs():
    with pytest.raises(gj.GradjaxInputError, match="opt_state"):
        gj.latest_norms(optax.sgd(0.1).init({"w": jnp.ones(2)}))
    with pytest.raises(gj.GradjaxInputError, match="common length"):
        gj.NormHistory.from_stacked({"a": np.ones(3), "b": np.ones(4)})
    with pytest.raises(gj.GradjaxInputError, match="percentile"):
        gj.NormHistory.from_stacked({"a": np.ones(3)}).clip_threshold(150)


def test_group_norms_survive_huge_gradients_and_report_nan():
    # 1e20 squared overflows float32; the scaled sum does not: sqrt(4) * 1e20 exactly.
    grads = {
        "Dense_0": {"kernel": jnp.full((2, 2), 1e20, jnp.float32)},
        "hidden": {"W": jnp.stack([jnp.full((2, 2), 1e20), jnp.full((2, 2), jnp.nan)])},
    }
    # One stacked leaf alone is ambiguous from shapes (a 3-D kernel?): the stack is named.
    norms = gj.module_group_norms(grads, stacked=[("hidden",)])
    assert float(norms["Dense_0"]) == pytest.approx(2e20, rel=1e-6)
    assert float(norms["hidden/0"]) == pytest.approx(2e20, rel=1e-6)
    assert math.isnan(float(norms["hidden/1"]))


def test_stacked_layers_are_found_from_shapes_not_names():
    from flax import linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.LayerNorm()(nn.Dense(4)(x)), None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(4, name="hidden")(x)  # a user's module named "hidden": one module
            trunk = nn.scan(
                Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
            )
            x, _ = trunk(name="trunk")(x, None)
            return nn.Dense(1)(x)

    params = Net().init(jax.random.key(0), jnp.ones((2, 4)))["params"]
    norms = gj.module_group_norms(params)
    assert "hidden" in norms and not any(k.startswith("hidden/") for k in norms)
    assert {"trunk/0/Dense_0", "trunk/2/LayerNorm_0"} <= set(norms)
    # Independent: the slice of layer 2 of the scanned kernel and bias, by hand.
    d = params["trunk"]["Dense_0"]
    expect = np.sqrt(np.sum(np.square(d["kernel"][2])) + np.sum(np.square(d["bias"][2])))
    assert float(norms["trunk/2/Dense_0"]) == pytest.approx(float(expect), rel=1e-6)
    assert len(norms) == 2 + 2 * 3  # hidden, Dense_1, and two modules per layer


def test_history_under_nnx_optimizer_holds_each_steps_norms(getkey):
    # nnx.Optimizer keeps its Optax state in Variables that later steps overwrite; the
    # history must hold each step's own norms, computed here independently in float64 NumPy.
    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(4, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    model = MLP(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.chain(gj.monitor(), optax.sgd(0.5)), wrt=nnx.Param)
    states, truth = [], []
    for step in range(4):
        x = jax.random.normal(getkey(), (8, 4))
        y = jnp.full((8, 1), 3.0 * (step + 1))
        grads = nnx.grad(lambda m, x=x, y=y: jnp.mean((m(x) - y) ** 2))(model)
        leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
        truth.append(
            float(np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64))) for v in leaves)))
        )
        optimizer.update(model, grads)
        states.append(gj.latest_norms(optimizer.opt_state))
    history = gj.NormHistory.from_states(states)
    np.testing.assert_allclose(np.asarray(history.global_norms()), truth, rtol=1e-5)
    assert len(set(np.round(truth, 3))) == 4  # the steps differ, so a live copy would fail


def _quadratic_problem():
    params = {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    xs = jax.random.normal(jax.random.key(0), (6, 4, 3))
    ys = jnp.arange(6.0)[:, None, None] * jnp.ones((6, 4, 2))

    def loss(p, x, y):
        return jnp.mean((x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"] - y) ** 2)

    def norm(g):  # float64 NumPy, the independent side
        return float(
            np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(g)))
        )

    return params, xs, ys, loss, norm


def test_history_inside_lax_scan_holds_each_steps_norms():
    params, xs, ys, loss, norm = _quadratic_problem()
    tx = gj.monitor(optax.sgd(0.05))

    def body(carry, batch):
        p, s = carry
        g = jax.grad(loss)(p, *batch)
        updates, s = tx.update(g, s, p)
        return (optax.apply_updates(p, updates), s), gj.latest_norms(s)

    _, stacked = jax.lax.scan(body, (params, tx.init(params)), (xs, ys))
    history = gj.NormHistory.from_stacked(stacked)
    truth, p = [], params
    for t in range(6):  # the same steps by hand, in Python
        g = jax.grad(loss)(p, xs[t], ys[t])
        truth.append(norm(g))
        p = jax.tree.map(lambda a, b: a - 0.05 * b, p, g)
    np.testing.assert_allclose(history.global_norms(), truth, rtol=1e-5)


def test_history_under_multisteps_records_the_accumulated_gradient():
    # optax.MultiSteps(every 2): the monitored inner chain sees the mean of two micro-batch
    # gradients once per two calls; between, the last full step's norms stay.
    params, xs, ys, loss, norm = _quadratic_problem()
    tx = optax.MultiSteps(gj.monitor(optax.sgd(0.05)), every_k_schedule=2)
    state, p, recorded = tx.init(params), params, []
    # MultiSteps mixes its int32 step counter with floats: standard promotion, as users run.
    with jax.numpy_dtype_promotion("standard"):
        for t in range(6):
            updates, state = tx.update(jax.grad(loss)(p, xs[t], ys[t]), state, p)
            p = optax.apply_updates(p, updates)
            recorded.append(gj.latest_norms(state))
    truth, q = [], params
    for t in range(0, 6, 2):
        g = jax.tree.map(lambda a, b: (a + b) / 2, jax.grad(loss)(q, xs[t], ys[t]),
                         jax.grad(loss)(q, xs[t + 1], ys[t + 1]))  # fmt: skip
        truth.append(norm(g))
        q = jax.tree.map(lambda a, b: a - 0.05 * b, q, g)
    history = gj.NormHistory.from_states(recorded[1::2])  # after each full step
    np.testing.assert_allclose(history.global_norms(), truth, rtol=1e-5)
