"""Tests for gradjax.train: vmapped scan training, divergence records, statistics."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradjax as gj
from gradjax.training import data as gdata
from gradjax.training.config import TrainConfig
from gradjax.training.optim import chain_from_config, set_hyperparams
from gradjax.utils.errors import GradjaxInputError

# The module (the package's name ``train`` is the function).
testimate = importlib.import_module("gradjax.training.estimate")
tloop = importlib.import_module("gradjax.training.loop")
tresults = importlib.import_module("gradjax.training.results")
tstats = importlib.import_module("gradjax.training.statistics")
ttrainable = importlib.import_module("gradjax.boundary.trainable")

# One small network on the digits, shared by most tests so compiled programs are reused.
DATA = gdata.digits()
NET = gj.build(
    gj.NetConfig(depth=3, width=32, input_dim=64, out_dim=10, init="he", activation="relu")
)
STEPS = 150
TCFG = TrainConfig(
    learning_rate=0.1, steps=STEPS, batch_size=32, warmup_steps=3, end_lr_fraction=0.5
)
# hyper axis: a sane run, an absurd learning rate that must blow up, a tightly clipped run.
HYPER = {"learning_rate": [0.1, 1e8, 0.1], "clip": [math.inf, math.inf, 0.01]}


@pytest.fixture(scope="module")
def result():
    return tloop.train(NET, DATA, TCFG, seeds=3, key=0, hyper=HYPER)


def _schedule(peak: float, t: int) -> float:
    # Independent source for the learning rate: optax's own schedule.
    ref = optax.warmup_cosine_decay_schedule(0.0, peak, 3, STEPS, 0.5 * peak)
    return float(ref(t))


@jax.jit
def _reference_step(params, lr, i):
    # Plain SGD by hand: w <- w - lr * grad (independent of gradjax.training.optim and train).
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
    idx = tloop._batch_indices(jax.random.fold_in(key, 1), DATA.n_train, STEPS, 32)
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


def test_seeds_split_over_devices_equal_one_device(result):
    # conftest provides 4 CPU devices: the shared run's 3 seeds are split 3 ways; the same run
    # with all seeds on one device is the reference (one new program, not two).
    assert len(tloop._seed_devices(None, 3)) == 3
    one = tloop.train(NET, DATA, TCFG, seeds=3, key=0, hyper=HYPER, devices=1)
    split = result.history
    # One seed per device batches its matmuls differently from three on one: float rounding.
    # The exploding run must blow up at the same step either way (its NaNs line up too).
    np.testing.assert_array_equal(split.first_nonfinite, one.history.first_nonfinite)
    np.testing.assert_allclose(split.loss, one.history.loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(split.grad_norms, one.history.grad_norms, rtol=1e-4)
    np.testing.assert_allclose(split.test.accuracy, one.history.test.accuracy, atol=0.01)


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
    alone = tloop.train(
        NET, DATA, TCFG, seeds=3, key=0, hyper={"learning_rate": [0.1] * 3, "clip": [math.inf] * 3}
    )
    np.testing.assert_allclose(result.history.loss[0], alone.history.loss[0], rtol=1e-5, atol=1e-7)
    q = tstats.seed_quantiles(result.history.loss)
    assert np.isfinite(q.median[0]).all() and np.isfinite(q.median[2]).all()
    np.testing.assert_array_equal(q.count[1, 20:], 0)
    rate = tstats.divergence_rate(result.history)
    np.testing.assert_allclose(rate.rate, [0.0, 1.0, 0.0])


def test_train_does_not_recompile_on_a_repeat_call(result):
    before = tloop._compiled.cache_info()
    again = tloop.train(NET, DATA, TCFG, seeds=3, key=0, hyper=HYPER)
    after = tloop._compiled.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    names = ("clip", "learning_rate")
    devices = tloop._seed_devices(None, 3)
    _, segment_all, _ = tloop._compiled(
        ttrainable.net_trainable(NET),
        TCFG,
        tloop._chain_overrides(TCFG, names),
        names,
        False,
        devices,
    )
    assert segment_all._cache_size() == 1
    np.testing.assert_array_equal(again.history.loss, result.history.loss)


def test_jitted_train_step_does_not_recompile(getkey):
    tx = chain_from_config(TCFG)
    traces = []

    def step(state, x, y):
        traces.append(1)  # runs only while tracing
        return tloop.train_step(NET, tx, "xent", state, x, y)

    jstep = jax.jit(step)
    params = NET.init(getkey())
    state = tresults.TrainState(
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
    res = tloop.train(NET, DATA, tcfg, seeds=2, params=params)
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
    r = tstats.wilson_interval(np.array([0, 5]), 10)
    np.testing.assert_allclose(r.low, [0.0, 0.2366], atol=1e-4)
    np.testing.assert_allclose(r.high, [0.2775, 0.7634], atol=1e-4)
    # A monotone curve has no excess variation; a zigzag e, 1, e, 1 has 2 (three swings of
    # log size 1, net change 1).
    assert tstats.early_oscillation(np.array([4.0, 3.0, 2.0, 1.0]), steps=4) == 0.0
    zig = np.exp(np.array([1.0, 0.0, 1.0, 0.0]))
    np.testing.assert_allclose(tstats.early_oscillation(zig, steps=4), 2.0)
    assert tstats.early_oscillation(np.array([1.0, np.nan, np.nan]), steps=3) == np.inf
    # Smoothing over 2 steps cancels a period-2 zigzag on a linear trend exactly.
    trend = np.exp(-0.1 * np.arange(8) + np.array([0.3, -0.3] * 4))
    assert tstats.early_oscillation(trend, steps=8) > 2.0
    np.testing.assert_allclose(tstats.early_oscillation(trend, steps=8, smooth=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(tstats.early_peak(np.array([2.0, 8.0, 1.0]), steps=3), 4.0)
    q = tstats.seed_quantiles(np.array([[1.0, 2.0, 3.0, np.nan, np.inf]]))
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
        tloop.train(NET, DATA, TCFG, **kwargs)


def test_mismatched_network_is_rejected():
    wrong = gj.build(gj.NetConfig(depth=2, width=8, input_dim=5, out_dim=3))
    with pytest.raises(GradjaxInputError, match="input_dim"):
        tloop.train(wrong, DATA, TCFG)


def test_overflow_inside_the_network_is_a_nonfinite_step_not_zero_gradients():
    # Block 1 outputs 1e22 everywhere (zero weights, bias 1e22); block 2's weights are all
    # -1e25, so its pre-activations are -32 * 1e47, below -float32 max (checked in float64):
    # they overflow to -inf, ReLU makes them 0 and the loss stays finite, while the gradients
    # of blocks 1 and 2 are exact zeros. That step is an overflow: NaN records at step 0.
    net = gj.build(gj.NetConfig(depth=3, width=32, input_dim=64, out_dim=10, activation="relu"))
    params = net.init(jax.random.key(0))
    params["input"]["W"] = jnp.zeros((32, 64), jnp.float32)
    params["input"]["b"] = jnp.full(32, 1e22, jnp.float32)
    params["hidden"]["W"] = params["hidden"]["W"].at[0].set(jnp.full((32, 32), -1e25))
    a1 = np.full(32, 1e22, np.float64)
    z2 = np.asarray(params["hidden"]["W"][0], np.float64) @ a1
    assert np.all(z2 < -np.finfo(np.float32).max)
    out = net.apply(params, DATA.x_train[:32])
    assert np.isfinite(np.asarray(out)).all()  # the loss alone does not show the overflow
    batched = jax.tree.map(lambda a: a[None, None], params)  # (hyper=1, seed=1)
    res = tloop.train(net, DATA, TCFG.replace(steps=2, warmup_steps=0), seeds=1, params=batched)
    h = res.history
    assert int(h.first_nonfinite[0, 0]) == 0
    assert np.isnan(np.asarray(h.grad_norms[0, 0])).all()
    assert not np.asarray(h.alive).any()


def _linen_mlp():
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.tanh(nn.Dense(16)(x)))

    return MLP()


def _nnx_mlp_class():
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, *, rngs):
            self.first = nnx.Linear(64, 16, rngs=rngs)
            self.second = nnx.Linear(16, 10, rngs=rngs)

        def __call__(self, x):
            return self.second(jnp.tanh(self.first(x)))

    return MLP


def _optax_reference(init, apply, kernels, seed_index, steps, lr):
    """A hand-written optax SGD loop with train()'s key convention (fold_in 0: init, 1: batches)."""
    key = jax.random.split(jax.random.key(7), 2)[seed_index]
    params = init(jax.random.fold_in(key, 0))
    idx = tloop._batch_indices(jax.random.fold_in(key, 1), DATA.n_train, steps, 32)
    tx = optax.sgd(lr)
    opt = tx.init(params)

    def loss_fn(p, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

    losses, norms = [], []
    for t in range(steps):
        x, y = DATA.x_train[idx[t]], DATA.y_train[idx[t]]
        loss, g = jax.value_and_grad(loss_fn)(params, x, y)
        losses.append(float(loss))
        norms.append([float(np.linalg.norm(np.asarray(k))) for k in kernels(g)])
        updates, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, updates)
    return np.array(losses), np.array(norms)


@pytest.mark.parametrize("kind", ["linen", "nnx", "pair"])
def test_user_flax_model_matches_a_hand_written_optax_loop(kind):
    from flax import nnx

    steps, lr = 6, 0.1
    tcfg = TrainConfig(learning_rate=lr, steps=steps, batch_size=32, end_lr_fraction=1.0)
    if kind in ("linen", "pair"):
        module = _linen_mlp()
        init = lambda k: module.init(k, DATA.x_train[:1])["params"]
        apply = lambda p, x: module.apply({"params": p}, x)
        # Execution order: the inner Dense (built second, so Dense_1) runs first.
        kernels = lambda g: [g["Dense_1"]["kernel"], g["Dense_0"]["kernel"]]
        layers = ("Dense_1", "Dense_0")
        model = module if kind == "linen" else (init, apply)
    else:
        cls = _nnx_mlp_class()
        model = cls  # a factory: cls(rngs=nnx.Rngs(key))
        graphdef = nnx.split(cls(rngs=nnx.Rngs(0)), nnx.Param)[0]
        init = lambda k: nnx.split(cls(rngs=nnx.Rngs(k)), nnx.Param)[1]
        apply = lambda p, x: nnx.merge(graphdef, p)(x)
        kernels = lambda g: [g["first"]["kernel"][...], g["second"]["kernel"][...]]
        layers = ("first", "second")
    res = tloop.train(model, DATA, tcfg, seeds=2, key=jax.random.key(7), devices=1)
    assert res.layers == layers
    h = res.history
    assert h.grad_norms.shape == (1, 2, steps, 2)
    for s in range(2):
        losses, norms = _optax_reference(init, apply, kernels, s, steps, lr)
        np.testing.assert_allclose(h.loss[0, s], losses, rtol=1e-5)
        np.testing.assert_allclose(h.grad_norms[0, s], norms, rtol=1e-5)
    assert np.all(np.asarray(h.first_nonfinite) == -1)


# ---------------------------------------------------------------------- the command line

TINY = ["train", "--depth", "2", "--width", "8", "--seeds", "2", "--steps", "3"]
TINY += ["--batch-size", "16", "--no-progress"]


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def _one_line_refusal(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        # Names come from the library's tables, refused in the one-line format.
        (["--optimizer", "adamx"], ["--optimizer='adamx' is invalid: expected one of", "adamw"]),
        # Was an OverflowError traceback from jax.random.key.
        (["--seed", "99999999999999999999"], ["--seed", "9223372036854775807"]),
        # Was a silent hang: 10^9 steps of records cannot fit, refused before any work.
        (["--steps", "1000000000"], ["steps=1000000000", "needs", "the limit is"]),
        # 10^5 blocks of 2048 x 2048: 1.6 TB of weights per seed.
        (["--depth", "100000", "--width", "2048"], ["depth=100000", "needs", "the limit is"]),
    ],
)
def test_cli_refuses_before_writing(tmp_path, capsys, args, fragments):
    from gradjax.commands.cli import main

    out = tmp_path / "run"
    code = main([*TINY, "--out", str(out), *args])
    _one_line_refusal(capsys, code, *fragments)
    assert not out.exists()


def test_cli_trains_with_adamw_and_refuses_other_results(tmp_path, capsys):
    from gradjax.commands.cli import main

    # --help lists the optimisers of the one table, adamw included, with the default.
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "{sgd,momentum,adam,adamw}" in help_text and "(default: sgd)" in help_text

    good = tmp_path / "adamw"
    adamw = [*TINY, "--optimizer", "adamw", "--weight-decay", "0.1", "--out", str(good)]
    # optax's Adam bias correction raises b1 (a Python float) to an int32 step count, which
    # has no promotion path under this suite's strict dtype promotion; users run "standard".
    with jax.numpy_dtype_promotion("standard"):
        assert main(adamw) == 0
    captured = capsys.readouterr()
    assert "FLOP" in captured.err  # the estimate is shown up front
    summary = _strict_json(captured.out)
    meta = json.loads((good / "meta.json").read_text())
    assert meta["train"]["optimizer"] == "adamw" and summary["divergence_rate"] == 0.0
    assert not list(good.glob(".*.tmp"))  # atomic writes leave no temporary files

    # An update of 1e30 overflows the next forward pass: every seed diverges at step 1, and
    # the summary's NaN median is valid JSON (it was a bare NaN).
    bad = tmp_path / "diverged"
    assert main([*TINY, "--lr", "1e30", "--out", str(bad)]) == 0
    summary = _strict_json(capsys.readouterr().out)
    assert summary["first_nonfinite_step"] == [1, 1]
    assert summary["final_loss_median"] == "nan"

    # A different run into the first directory is refused (it overwrote it silently).
    before = (good / "history.npz").read_bytes()
    code = main([*TINY, "--optimizer", "adamw", "--lr", "0.5", "--out", str(good)])
    _one_line_refusal(capsys, code, "--out", "different training run", "train")
    assert (good / "history.npz").read_bytes() == before
    # So is a sweep's directory.
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "manifest.json").write_text("{}")
    code = main([*TINY, "--out", str(sweep)])
    _one_line_refusal(capsys, code, "--out", "manifest.json")
    assert sorted(p.name for p in sweep.iterdir()) == ["manifest.json"]


def test_cli_long_run_reports_progress_without_a_bar(tmp_path, capsys, monkeypatch):
    from gradjax.commands import train as train_command
    from gradjax.commands.cli import main

    # A host guessed at 1 FLOP/s makes 3 tiny steps a long run: its estimate and its steps
    # are printed with --no-progress (a long run with --no-progress was silent).
    monkeypatch.setattr(train_command, "GUESS_FLOPS_PER_S", 1.0)
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.splitlines()
    flops = 3 * 2 * 16 * (64 * 8 + 8 * 8 + 8 * 10) * 2  # 3x forward matmuls, 2 seeds
    assert err[0].startswith(f"gradjax train: 3 steps x {flops:.3g} FLOP per step")
    assert err[1:] == [f"gradjax train: step {k}/3" for k in (1, 2, 3)]


def test_save_is_atomic_and_meta_is_standard_json(result, tmp_path, monkeypatch):
    out = result.save(tmp_path / "run")
    # hyper holds clip = inf: meta.json is standard JSON ("inf"), not a bare Infinity.
    meta = _strict_json((out / "meta.json").read_text())
    assert meta["hyper"]["clip"] == ["inf", "inf", 0.01]
    before = (out / "history.npz").read_bytes()

    def broken_savez(file, **arrays):
        # A writer killed half-way, whether given an open file or the target's path.
        if isinstance(file, (str, Path)):
            Path(file).write_bytes(b"PK\x03\x04 half a zip")
        else:
            file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        result.save(out)
    # The previous file is intact and no temporary file is left behind.
    assert (out / "history.npz").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["history.npz", "meta.json", "variables.npz"]


class _BatchNormDropout:
    """A Linen classifier with BatchNorm and Dropout, switched by a ``train`` keyword."""

    @staticmethod
    def make():
        import flax.linen as nn

        class Classifier(nn.Module):
            @nn.compact
            def __call__(self, x, train: bool = False):
                x = nn.Dense(32)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
                x = nn.Dropout(0.2, deterministic=not train)(nn.relu(x))
                return nn.Dense(10)(x)

        return Classifier()


def test_linen_batchnorm_and_dropout_train_as_a_hand_written_loop():
    # The reference: optax SGD by hand, batch statistics updated every step, a fresh dropout
    # key per step and seed (train()'s convention: fold_in(fold_in(seed key, 3), step)).
    module = _BatchNormDropout.make()
    steps, lr = 3, 0.1
    tcfg = TrainConfig(learning_rate=lr, steps=steps, batch_size=32, end_lr_fraction=1.0)
    res = tloop.train(module, DATA, tcfg, seeds=2, key=jax.random.key(7), devices=1)
    assert res.layers == ("Dense_0", "Dense_1")
    for s in range(2):
        key = jax.random.split(jax.random.key(7), 2)[s]
        k0 = jax.random.fold_in(key, 0)
        params = module.init({"params": k0, "dropout": jax.random.fold_in(k0, 1)}, DATA.x_train[:1])
        params = params["params"]
        stats = module.init(jax.random.fold_in(key, 2), DATA.x_train[:1])["batch_stats"]
        idx = tloop._batch_indices(jax.random.fold_in(key, 1), DATA.n_train, steps, 32)
        rng = jax.random.fold_in(key, 3)
        tx = optax.sgd(lr)
        opt = tx.init(params)

        def loss_fn(p, stats, x, y, k):
            out, new = module.apply(
                {"params": p, "batch_stats": stats}, x, train=True, rngs={"dropout": k},
                mutable=["batch_stats"],
            )  # fmt: skip
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), new

        losses = []
        for t in range(steps):
            x, y = DATA.x_train[idx[t]], DATA.y_train[idx[t]]
            (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(
                params, stats, x, y, jax.random.fold_in(rng, t)
            )
            stats = new["batch_stats"]
            losses.append(float(loss))
            updates, opt = tx.update(g, opt, params)
            params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(res.history.loss[0, s], losses, rtol=1e-5)
        final = jax.tree.map(lambda v, s=s: v[0, s], res.variables)
        np.testing.assert_allclose(
            final["state"]["batch_stats"]["BatchNorm_0"]["mean"],
            stats["BatchNorm_0"]["mean"],
            rtol=1e-5,
        )
        # Evaluation reads the running averages with dropout off.
        out = module.apply({"params": final["params"], **final["state"]}, DATA.x_test)
        acc = np.mean(np.argmax(np.asarray(out), -1) == np.asarray(DATA.y_test))
        assert float(res.history.test.accuracy[0, s]) == pytest.approx(acc, abs=1e-6)


def test_nnx_batchnorm_and_dropout_train_and_their_state_is_returned():
    from flax import nnx

    class Classifier(nnx.Module):
        def __init__(self, *, rngs):
            self.first = nnx.Linear(64, 32, rngs=rngs)
            self.norm = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
            self.drop = nnx.Dropout(0.2, rngs=rngs)
            self.head = nnx.Linear(32, 10, rngs=rngs)

        def __call__(self, x):
            return self.head(self.drop(nnx.relu(self.norm(self.first(x)))))

    short = TCFG.replace(steps=8, warmup_steps=0, batch_size=32)
    res = tloop.train(Classifier, DATA, short, seeds=2, devices=1)
    assert res.layers == ("first", "head")
    assert np.all(np.isfinite(np.asarray(res.history.loss)))
    means = np.asarray(res.variables["state"]["norm"]["mean"][...])
    assert means.shape == (1, 2, 32) and np.all(means != 0)  # updated from their zero start
    assert not np.allclose(means[0, 0], means[0, 1])  # each seed its own run


def test_user_models_that_cannot_train_are_refused_up_front():
    import flax.linen as nn

    class Wide(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(10)(nn.Dense(200_000)(x))

    short = TCFG.replace(steps=2, warmup_steps=0)
    wrong = (lambda k: {"w": jnp.zeros((64, 3))}, lambda p, x: x @ p["w"])
    with pytest.raises(GradjaxInputError, match="model output size=3"):
        tloop.train(wrong, DATA, short, seeds=1)
    # 200,000 x 74 float32 weights x (params, gradient, two Adam slots) x 10^4 seeds:
    # 2.2 TB, refused from shapes alone (nothing is drawn or compiled).
    est = testimate.estimate(Wide(), DATA, short.replace(optimizer="adam"), seeds=10_000)
    weights = 200_000 * 64 + 200_000 * 10
    assert est.bytes > 10_000 * 4 * 4 * weights
    assert est.step_flops == 10_000 * 6 * 32 * weights
    refusal = r"training \(steps=2, model=Wide, seeds=10000\) needs"
    with pytest.raises(GradjaxInputError, match=refusal):
        tloop.train(Wide(), DATA, short.replace(optimizer="adam"), seeds=10_000)


def test_an_nnx_module_instance_is_every_seed_s_starting_point():
    from flax import nnx

    module = _nnx_mlp_class()(rngs=nnx.Rngs(3))
    short = TCFG.replace(steps=2, warmup_steps=0)
    res = tloop.train(module, DATA, short, seeds=2, devices=1)
    expected = [np.linalg.norm(np.asarray(module.first.kernel[...]))]
    expected.append(np.linalg.norm(np.asarray(module.second.kernel[...])))
    for s in range(2):
        np.testing.assert_allclose(res.history.initial_weight_norms[0, s], expected, rtol=1e-6)
    # The seeds differ in their minibatches only, so their first losses differ.
    assert res.history.loss[0, 0, 0] != res.history.loss[0, 1, 0]
    assert json.loads(res.meta)["net"]["initial_params"] == "the module's own"


def test_training_records_as_labelled_data(result, monkeypatch):
    data = result.to_xarray()
    assert data["grad_norm"].dims == ("hyper", "seed", "step", "layer")
    assert list(data["layer"].values) == list(result.layers)
    np.testing.assert_array_equal(data["learning_rate"].values, result.history.learning_rate)
    np.testing.assert_array_equal(data["hyper_clip"].values, result.hyper["clip"])
    np.testing.assert_array_equal(data["test_accuracy"].values, result.history.test.accuracy)
    frame = result.to_dataframe()
    assert len(frame) == np.asarray(result.history.grad_norms).size
    row = frame[(frame.hyper == 2) & (frame.seed == 1) & (frame.step == 7)]
    np.testing.assert_array_equal(row["grad_norm"], result.history.grad_norms[2, 1, 7])
    assert set(row["loss"]) == {float(result.history.loss[2, 1, 7])}
    assert list(row["layer"]) == list(result.layers)
    # Without the optional extra: one line saying what to install.
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name)) if name == "xarray" else real(name, *a, **k)
        ),
    )
    with pytest.raises(GradjaxInputError, match=r"pip install 'gradjax\[labelled\]'"):
        result.to_xarray()


def test_training_resumes_after_an_interrupt_with_identical_histories(tmp_path, monkeypatch):
    tcfg = dataclasses.replace(TCFG, steps=40)
    kwargs = {"seeds": 2, "key": 3, "segments": 4}
    whole = tloop.train(NET, DATA, tcfg, **kwargs)
    calls = {"n": 0}
    real_check = tloop.interrupts.check

    def stop_before_the_third_segment():
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_check()

    monkeypatch.setattr(tloop.interrupts, "check", stop_before_the_third_segment)
    with pytest.raises(KeyboardInterrupt):
        tloop.train(NET, DATA, tcfg, out=tmp_path, **kwargs)
    saved = sorted(p.name.split("-")[0] for p in (tmp_path / "segments").iterdir())
    assert saved == ["records", "records", "state"]  # two segments, the latest state only
    # A damaged copy of a later segment's file is ignored (its hash does not match).
    (tmp_path / "segments" / f"records-000002-{'0' * 64}.npz").write_bytes(b"damaged")
    monkeypatch.setattr(tloop.interrupts, "check", real_check)
    computed = []
    real_segment = tloop._compiled

    def counting(*args, **kw):
        init_all, segment_all, eval_all = real_segment(*args, **kw)

        def run(*a):  # counts runs, not the shape evaluation that checks saved records
            computed.append(not isinstance(a[1], jax.core.Tracer))
            return segment_all(*a)

        return init_all, run, eval_all

    monkeypatch.setattr(tloop, "_compiled", counting)
    resumed = tloop.train(NET, DATA, tcfg, out=tmp_path, **kwargs)
    assert sum(computed) == 2  # only the two missing segments ran
    pairs = [(whole.history, resumed.history), (whole.variables, resumed.variables)]
    for first, second in pairs:
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The finished result is saved and the segment files are gone.
    assert not (tmp_path / "segments").exists()
    with np.load(tmp_path / "history.npz") as saved_history:
        np.testing.assert_array_equal(saved_history["loss"], np.asarray(whole.history.loss))


def test_an_nnx_scanned_stack_trains_with_its_own_state_per_layer_and_seed():
    from flax import nnx

    layers, width = 3, 16

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(width, width, rngs=rngs)
            self.norm = nnx.BatchNorm(width, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)

        def __call__(self, x):
            return self.drop(nnx.tanh(self.norm(self.linear(x))))

    class ScanMLP(nnx.Module):  # Flax's scan-over-layers pattern: nnx.vmap, then nnx.scan
        def __init__(self, rngs):
            self.stem = nnx.Linear(64, width, rngs=rngs)

            @nnx.split_rngs(splits=layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs):
                return Block(rngs)

            self.blocks = create(rngs)
            self.head = nnx.Linear(width, 10, rngs=rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
            def forward(block, x):
                return block(x)

            return self.head(forward(self.blocks, self.stem(x)))

    tcfg = TrainConfig(learning_rate=0.05, steps=30, batch_size=32)
    res = tloop.train(ScanMLP, DATA, tcfg, seeds=2, key=0)
    assert res.layers == ("stem", "blocks/0/linear", "blocks/1/linear", "blocks/2/linear", "head")
    mean = np.asarray(res.variables["state"]["blocks"]["norm"]["mean"][...])
    assert mean.shape == (1, 2, layers, width)  # (hyper, seed, layer, feature)
    assert np.all(np.abs(mean).max(axis=-1) > 0)  # every layer's statistics were updated
    assert not np.allclose(mean[0, 0], mean[0, 1])  # each seed its own
    loss = np.asarray(res.history.loss)
    assert np.all(loss[..., -5:].mean(-1) < loss[..., :5].mean(-1))
