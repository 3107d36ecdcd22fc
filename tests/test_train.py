"""Tests for gradjax.train: vmapped scan training, divergence records, statistics."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradjax as gj
from gradjax import data as gdata
from gradjax import train as gtrain
from gradjax.config import TrainConfig
from gradjax.errors import GradjaxInputError
from gradjax.optim import chain_from_config, set_hyperparams

# One small network on the digits, shared by most tests so compiled programs are reused.
DATA = gdata.digits()
NET = gj.build(gj.NetConfig(depth=3, width=32, in_dim=64, out_dim=10, init="he", activation="relu"))
STEPS = 150
TCFG = TrainConfig(
    learning_rate=0.1, steps=STEPS, batch_size=32, warmup_steps=3, end_lr_fraction=0.5
)
# hyper axis: a sane run, an absurd learning rate that must blow up, a tightly clipped run.
HYPER = {"learning_rate": [0.1, 1e8, 0.1], "clip": [math.inf, math.inf, 0.01]}


@pytest.fixture(scope="module")
def result():
    return gtrain.train(NET, DATA, TCFG, seeds=3, key=0, hyper=HYPER)


def _schedule(peak: float, t: int) -> float:
    # Independent source for the learning rate: optax's own schedule.
    ref = optax.warmup_cosine_decay_schedule(0.0, peak, 3, STEPS, 0.5 * peak)
    return float(ref(t))


@jax.jit
def _reference_step(params, lr, i):
    # Plain SGD by hand: w <- w - lr * grad (independent of gradjax.optim and train).
    x, y = DATA.x_train[i], DATA.y_train[i]
    loss, g = jax.value_and_grad(lambda p: gj.cross_entropy_loss(NET.apply(p, x), y))(params)
    params = jax.tree.map(lambda w, d: w - lr * d, params, g)
    finite = jnp.isfinite(loss)
    for a in jax.tree.leaves((g, params)):
        finite &= jnp.all(jnp.isfinite(a))
    return params, loss, finite


def _reference_run(seed_index: int, peak: float):
    """A plain per-seed Python loop over steps: the independent reference for train()."""
    key = jax.random.split(jax.random.key(0), 3)[seed_index]
    params = NET.init(jax.random.fold_in(key, 0))
    idx = gtrain._batch_indices(jax.random.fold_in(key, 1), DATA.n_train, STEPS, 32)
    losses, first = [], -1
    for t in range(STEPS):
        lr = jnp.float32(_schedule(peak, t))
        params, loss, finite = _reference_step(params, lr, idx[t])
        losses.append(float(loss))
        if not bool(finite):
            first = t
            break
    return np.array(losses), params, first


def test_vmapped_training_equals_per_seed_training(result):
    h = result.history
    assert h.loss.shape == (3, 3, STEPS) and h.grad_norms.shape == (3, 3, STEPS, 3)
    for s in range(3):
        losses, params, first = _reference_run(s, 0.1)
        assert first == -1
        np.testing.assert_allclose(h.loss[0, s], losses, rtol=2e-3, atol=1e-5)
        acc = np.mean(np.argmax(NET.apply(params, DATA.x_test), -1) == np.asarray(DATA.y_test))
        np.testing.assert_allclose(h.test.accuracy[0, s], acc, atol=1.5 / 360)
    assert np.all(np.asarray(h.first_nonfinite[0]) == -1)


def test_seeds_split_over_devices_equal_one_device():
    # conftest provides 4 CPU devices; 4 seeds split 4 ways vs all on one device.
    short = dataclasses.replace(TCFG, steps=20)
    split = gtrain.train(NET, DATA, short, seeds=4, key=3, hyper={"clip": [math.inf, 0.5]})
    one = gtrain.train(NET, DATA, short, seeds=4, key=3, hyper={"clip": [math.inf, 0.5]}, devices=1)
    assert len(jax.devices()) >= 4
    # One seed per device batches its matmuls differently from four on one: float rounding.
    np.testing.assert_allclose(split.history.loss, one.history.loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(split.history.grad_norms, one.history.grad_norms, rtol=1e-4)
    np.testing.assert_allclose(split.history.test.accuracy, one.history.test.accuracy, atol=0.01)


def test_exploding_run_records_first_nonfinite_step(result):
    h = result.history
    for s in range(3):
        _, _, first = _reference_run(s, 1e8)
        assert first >= 1  # the first step is finite; the huge update blows up later
        assert int(h.first_nonfinite[1, s]) == first
        alive = np.asarray(h.alive[1, s])
        assert alive[:first].all() and not alive[first:].any()
        loss = np.asarray(h.loss[1, s])
        assert np.isfinite(loss[:first]).all() and np.isnan(loss[first:]).all()
        assert np.isnan(np.asarray(h.grad_norms[1, s, first:])).all()
    # Frozen at the last finite parameters: accuracy is still a number (its loss may overflow).
    assert np.isfinite(np.asarray(h.test.accuracy[1])).all()
    assert np.isfinite(np.asarray(h.initial_weight_norms)).all()


def test_diverged_runs_do_not_pollute_the_others(result):
    # The sane runs are the same with and without the exploding runs beside them.
    alone = gtrain.train(
        NET, DATA, TCFG, seeds=3, key=0, hyper={"learning_rate": [0.1] * 3, "clip": [math.inf] * 3}
    )
    np.testing.assert_allclose(result.history.loss[0], alone.history.loss[0], rtol=1e-5, atol=1e-7)
    q = gtrain.seed_quantiles(result.history.loss)
    assert np.isfinite(q.median[0]).all() and np.isfinite(q.median[2]).all()
    np.testing.assert_array_equal(q.count[1, 20:], 0)
    rate = gtrain.divergence_rate(result.history)
    np.testing.assert_allclose(rate.rate, [0.0, 1.0, 0.0])


def test_train_does_not_recompile_on_a_repeat_call(result):
    before = gtrain._compiled.cache_info()
    again = gtrain.train(NET, DATA, TCFG, seeds=3, key=0, hyper=HYPER)
    after = gtrain._compiled.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    names = ("clip", "learning_rate")
    devices = gtrain._seed_devices(None, 3)
    _, segment_all, _ = gtrain._compiled(
        NET, TCFG, gtrain._chain_overrides(TCFG, names), names, False, devices
    )
    assert segment_all._cache_size() == 1
    np.testing.assert_array_equal(again.history.loss, result.history.loss)


def test_jitted_train_step_does_not_recompile(getkey):
    tx = chain_from_config(TCFG)
    traces = []

    def step(state, x, y):
        traces.append(1)  # runs only while tracing
        return gtrain.train_step(NET, tx, "xent", state, x, y)

    jstep = jax.jit(step)
    params = NET.init(getkey())
    state = gtrain.TrainState(
        params=params,
        opt_state=tx.init(params),
        alive=jnp.ones((), bool),
        first_nonfinite=jnp.full((), -1, jnp.int32),
        step=jnp.zeros((), jnp.int32),
    )
    x, y = DATA.x_train[:32], DATA.y_train[:32]
    state = dataclasses.replace(state, opt_state=set_hyperparams(state.opt_state, warmup_steps=0.0))
    state, rec1 = jstep(state, x, y)
    state, rec2 = jstep(state, DATA.x_train[32:64], DATA.y_train[32:64])
    assert len(traces) == 1
    assert int(state.step) == 2 and bool(state.alive)
    # The step's record equals an independent gradient computation.
    g = jax.grad(lambda p: gj.cross_entropy_loss(NET.apply(p, x), y))(params)
    np.testing.assert_allclose(rec1.grad_norms[0], np.linalg.norm(g["input"]["W"]), rtol=1e-5)
    np.testing.assert_allclose(
        rec1.grad_norms[1:], np.linalg.norm(np.asarray(g["hidden"]["W"]), axis=(1, 2)), rtol=1e-5
    )


def test_clipping_and_schedule_inside_training(result):
    h = result.history
    # Same params and batch at step 0: identical raw gradient norms with or without clipping.
    np.testing.assert_allclose(h.grad_norms[0, :, 0], h.grad_norms[2, :, 0], rtol=1e-6)
    # SGD update = lr(t) * clipped gradient, so its norm is at most lr(t) * 0.01.
    lr = np.asarray(h.learning_rate[2, 0])
    assert np.all(np.asarray(h.update_norm[2]) <= lr * 0.01 * (1 + 1e-4) + 1e-12)
    assert np.all(np.asarray(h.grad_norms[2, :, 3:, 0]) > 0.01)  # so clipping was active
    np.testing.assert_allclose(lr, [_schedule(0.1, t) for t in range(STEPS)], atol=1e-7)


def test_given_initial_params_and_save(tmp_path, getkey):
    keys = jax.random.split(getkey(), 2)
    base = jax.vmap(NET.init)(keys)
    params = jax.tree.map(lambda a: jnp.stack([a, 3.0 * a]), base)  # (hyper=2, seed=2)
    tcfg = TCFG.replace(steps=4, warmup_steps=0)
    res = gtrain.train(NET, DATA, tcfg, seeds=2, params=params)
    w0 = np.linalg.norm(np.asarray(params["input"]["W"]), axis=(-2, -1))
    np.testing.assert_allclose(res.history.initial_weight_norms[..., 0], w0, rtol=1e-5)
    out = res.save(tmp_path / "run")
    with np.load(out / "history.npz") as z:
        np.testing.assert_array_equal(z["loss"], np.asarray(res.history.loss))
        assert "test/accuracy" in z.files and "first_nonfinite" in z.files
    meta = json.loads((out / "meta.json").read_text())
    assert meta["axes"] == ["hyper", "seed"] and meta["seeds"] == 2


def test_digits_accuracy_matches_a_linear_baseline(result):
    # Independent reference: scikit-learn's logistic regression on the same split
    # (about 0.96 test accuracy on digits). A small MLP trained by gradjax must be close.
    from sklearn.linear_model import LogisticRegression

    x_tr, y_tr = np.asarray(DATA.x_train), np.asarray(DATA.y_train)
    clf = LogisticRegression(max_iter=2000).fit(x_tr, y_tr)
    baseline = clf.score(np.asarray(DATA.x_test), np.asarray(DATA.y_test))
    acc = np.asarray(result.history.test.accuracy[0])
    assert baseline > 0.9
    assert np.all(acc >= baseline - 0.06), (acc, baseline)


def test_statistics_against_closed_forms():
    # Wilson (1927) 95% intervals, published values: 0/10 -> [0, 0.2775]; 5/10 -> [0.2366,
    # 0.7634].
    r = gtrain.wilson_interval(np.array([0, 5]), 10)
    np.testing.assert_allclose(r.low, [0.0, 0.2366], atol=1e-4)
    np.testing.assert_allclose(r.high, [0.2775, 0.7634], atol=1e-4)
    # A monotone curve has no excess variation; a zigzag e, 1, e, 1 has 2 (three swings of
    # log size 1, net change 1).
    assert gtrain.early_oscillation(np.array([4.0, 3.0, 2.0, 1.0]), steps=4) == 0.0
    zig = np.exp(np.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_allclose(gtrain.early_oscillation(zig, steps=4), 2.0)
    assert gtrain.early_oscillation(np.array([1.0, np.nan, np.nan]), steps=3) == np.inf
    # Smoothing over 2 steps cancels a period-2 zigzag on a linear trend exactly.
    trend = np.exp(-0.1 * np.arange(8) + np.array([0.3, -0.3] * 4))
    assert gtrain.early_oscillation(trend, steps=8) > 2.0
    np.testing.assert_allclose(gtrain.early_oscillation(trend, steps=8, smooth=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(gtrain.early_peak(np.array([2.0, 8.0, 1.0]), steps=3), 4.0)
    q = gtrain.seed_quantiles(np.array([[1.0, 2.0, 3.0, np.nan, np.inf]]))
    np.testing.assert_allclose([q.median[0], q.q25[0], q.q75[0]], [2.0, 1.5, 2.5])
    assert int(q.count[0]) == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hyper": {"beta": [1.0]}}, "hyper"),
        ({"hyper": {"learning_rate": [-0.1]}}, "learning_rate"),
        ({"hyper": {"clip": [0.0]}}, "clip"),
        ({"hyper": {"warmup_steps": [STEPS + 1]}}, "warmup_steps"),
        ({"hyper": {"learning_rate": [0.1, 0.2], "clip": [1.0]}}, "hyper"),
        ({"seeds": 0}, "seeds"),
        ({"devices": 99}, "devices"),
        ({"devices": ["cpu"]}, "devices"),
    ],
)
def test_bad_input(kwargs, field):
    with pytest.raises(GradjaxInputError, match=field):
        gtrain.train(NET, DATA, TCFG, **kwargs)


def test_mismatched_network_is_rejected():
    wrong = gj.build(gj.NetConfig(depth=2, width=8, in_dim=5, out_dim=3))
    with pytest.raises(GradjaxInputError, match="in_dim"):
        gtrain.train(wrong, DATA, TCFG)
