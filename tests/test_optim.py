"""Tests for gradjax.training.optim: the mitigation chain and the gradient-norm recorder."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradjax.training import optim
from gradjax.training.config import TrainConfig
from gradjax.utils.errors import GradjaxInputError


def _tree(key, scale=1.0):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "input": {"W": scale * jax.random.normal(k1, (5, 3)), "b": jnp.zeros(5)},
        "hidden": {"W": scale * jax.random.normal(k2, (4, 5, 5))},
        "readout": {"W": scale * jax.random.normal(k3, (2, 5))},
    }


def test_l1_penalty_adds_lambda_sign_exactly(getkey):
    params = {"w": jnp.array([-2.0, 0.0, 3.5, -1e-30]), "v": jax.random.normal(getkey(), (3, 3))}
    grads = jax.tree.map(lambda a: jax.random.normal(getkey(), a.shape), params)
    tx = optim.add_l1_penalty(0.125)
    out, _ = tx.update(grads, tx.init(params), params)
    for name in params:
        # Closed form: g + lambda * sign(w), with sign(0) = 0; 0.125 is exact in binary.
        expected = np.asarray(grads[name]) + 0.125 * np.sign(np.asarray(params[name]))
        np.testing.assert_array_equal(np.asarray(out[name]), expected)
    np.testing.assert_array_equal(np.asarray(out["w"] - grads["w"]), [-0.125, 0.0, 0.125, -0.125])


def test_l1_penalty_mask_and_needs_params():
    params = {"W": jnp.ones(2), "b": jnp.ones(2)}
    tx = optim.add_l1_penalty(1.0, mask={"W": True, "b": False})
    out, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_array_equal(out["W"], [1.0, 1.0])
    np.testing.assert_array_equal(out["b"], [0.0, 0.0])
    with pytest.raises(ValueError, match="params"):
        optim.add_l1_penalty(1.0).update(params, optax.EmptyState())


@pytest.mark.parametrize("warmup", [0, 10, 40])
def test_schedule_matches_optax_and_closed_form(warmup):
    peak, total, end = 0.3, 100, 0.03
    reference = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, end)
    steps = np.arange(0, 130)
    ours = jax.vmap(
        lambda t: optim.warmup_cosine(
            t, peak_value=peak, warmup_steps=warmup, total_steps=total, end_value=end
        )
    )(jnp.asarray(steps))
    # Independent source: optax's own schedule (Python-branching, static arguments).
    np.testing.assert_allclose(
        ours, [float(reference(int(t))) for t in steps], rtol=1e-6, atol=1e-8
    )
    # Closed form: the peak at the end of warm-up, the end value at the end of the decay
    # and after it, half-way between in the middle of the cosine.
    np.testing.assert_allclose(ours[warmup], peak, rtol=1e-6)
    np.testing.assert_allclose(ours[total], end, rtol=1e-6)
    np.testing.assert_allclose(ours[total + 20], end, rtol=1e-6)
    if warmup % 2 == 0:
        mid = (warmup + total) // 2
        np.testing.assert_allclose(ours[mid], (peak + end) / 2, rtol=1e-5)
    if warmup:
        np.testing.assert_allclose(ours[warmup // 2], peak * (warmup // 2) / warmup, rtol=1e-6)


def test_chain_applies_schedule_per_step():
    # SGD on a unit gradient: the update of step t is exactly -lr(t).
    tx = optim.mitigation_chain(
        learning_rate=0.5, total_steps=20, warmup_steps=5, end_lr_fraction=0.1
    )
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    step = jax.jit(tx.update)
    got = []
    for _ in range(22):
        upd, state = step({"w": jnp.ones(())}, state, params)
        got.append(float(upd["w"]))
    ref = optax.warmup_cosine_decay_schedule(0.0, 0.5, 5, 20, 0.05)
    np.testing.assert_allclose(got, [-float(ref(t)) for t in range(22)], rtol=1e-6, atol=1e-9)
    assert got[5] == pytest.approx(-0.5) and got[20] == pytest.approx(-0.05)


def _np_norm(tree) -> float:
    # Independent global norm: float64 NumPy over all leaves.
    return float(
        np.sqrt(sum(np.sum(np.asarray(a, np.float64) ** 2) for a in jax.tree.leaves(tree)))
    )


_CLIP_TX = optim.mitigation_chain(
    learning_rate=1.0, total_steps=10, end_lr_fraction=1.0, clip=1.0, record_norms=False
)


@jax.jit
def _clipped_update(seed, scale, max_norm):
    grads = _tree(jax.random.key(seed), scale)
    state = optim.set_hyperparams(_CLIP_TX.init(grads), clip=max_norm)
    return grads, _CLIP_TX.update(grads, state, grads)[0]


@settings(max_examples=25, deadline=None)
@given(
    scale=st.floats(1e-3, 1e3),
    max_norm=st.floats(1e-2, 10.0),
    seed=st.integers(0, 2**16),
)
def test_clipping_bounds_global_norm(scale, max_norm, seed):
    grads, upd = _clipped_update(seed, jnp.float32(scale), jnp.float32(max_norm))
    max_norm = float(jnp.float32(max_norm))
    g_norm, u_norm = _np_norm(grads), _np_norm(upd)
    # SGD with lr 1: the update is minus the clipped gradient.
    assert u_norm <= max_norm * (1 + 1e-5)
    if g_norm <= max_norm:
        np.testing.assert_allclose(u_norm, g_norm, rtol=1e-5)
    else:
        np.testing.assert_allclose(u_norm, max_norm, rtol=1e-5)
        # Direction is kept: the update is a negative multiple of the gradient.
        ratio = np.asarray(upd["hidden"]["W"]) / np.asarray(grads["hidden"]["W"])
        np.testing.assert_allclose(ratio, -max_norm / g_norm, rtol=1e-4)


def test_infinite_clip_is_identity_and_vmappable(getkey):
    grads = _tree(getkey(), 50.0)
    tx = optim.mitigation_chain(
        learning_rate=1.0, total_steps=10, end_lr_fraction=1.0, clip=math.inf
    )
    state = tx.init(grads)
    clips = jnp.array([math.inf, 1.0, 0.1])

    def one(c):
        upd, _ = tx.update(grads, optim.set_hyperparams(state, clip=c), grads)
        return optax.tree.norm(upd)

    norms = jax.jit(jax.vmap(one))(clips)
    np.testing.assert_allclose(norms, [_np_norm(grads), 1.0, 0.1], rtol=1e-5)


def test_clipping_is_overflow_safe():
    # float32 entries of 1e30: optax's squared norm overflows; the clipped norm must still be
    # exactly max_norm (direction kept), and inf must leave the update untouched.
    grads = {"a": jnp.full((3,), 1e30, jnp.float32), "b": jnp.full((1,), -1e30, jnp.float32)}
    for max_norm, expected in [(2.0, 2.0), (math.inf, 2e30)]:
        tx = optim.clip_by_global_norm(max_norm)
        out, _ = tx.update(grads, tx.init(grads))
        np.testing.assert_allclose(_np_norm(out), expected, rtol=1e-6)
        np.testing.assert_allclose(out["b"] / out["a"][0], [-1.0], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_chain_matches_optax_reference(getkey, optimizer):
    # With no warm-up and a constant schedule the chain is the textbook optimiser, with the
    # L2 term added to the gradient (optax.chain(add_decayed_weights, <opt>) is the reference).
    params = _tree(getkey())
    wd, lr = 0.01, 0.05
    ours = optim.mitigation_chain(
        optimizer=optimizer,
        learning_rate=lr,
        total_steps=10,
        end_lr_fraction=1.0,
        weight_decay=wd,
        momentum=0.8,
    )
    core = {
        "sgd": optax.sgd(lr),
        "momentum": optax.sgd(lr, momentum=0.8),
        "adam": optax.adam(lr, b1=0.8),
    }[optimizer]
    ref = optax.chain(optax.add_decayed_weights(wd), core)
    p1, p2 = params, params
    s1, s2 = ours.init(p1), ref.init(p2)
    # optax's Adam bias correction (python float ** int32 count) needs standard promotion;
    # the conftest's strict mode would reject it inside optax itself.
    with jax.numpy_dtype_promotion("standard"):
        step1, step2 = jax.jit(ours.update), jax.jit(ref.update)
        for _ in range(4):
            g = jax.tree.map(lambda a: jax.random.normal(getkey(), a.shape), params)
            u1, s1 = step1(g, s1, p1)
            u2, s2 = step2(g, s2, p2)
            p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _run(tx, params, grads_fn, steps):
    """Applies ``steps`` updates of ``tx`` with gradients ``grads_fn(params)``."""
    state = tx.init(params)
    with jax.numpy_dtype_promotion("standard"):
        step = jax.jit(tx.update)
        for _ in range(steps):
            upd, state = step(grads_fn(params), state, params)
            params = optax.apply_updates(params, upd)
    return params


@pytest.mark.parametrize("form", ["adamw", "adam+decoupled"])
def test_decoupled_decay_equals_optax_adamw(getkey, form):
    # Independent source: optax.adamw (decay added after Adam's scaling, times the rate).
    params = _tree(getkey())
    wd, lr = 0.1, 0.05
    kw = (
        {"optimizer": "adamw", "weight_decay": wd}
        if form == "adamw"
        else {"optimizer": "adam", "decoupled_weight_decay": wd}
    )
    ours = optim.mitigation_chain(
        learning_rate=lr, total_steps=10, end_lr_fraction=1.0, momentum=0.8, **kw
    )
    ref = optax.adamw(lr, b1=0.8, weight_decay=wd)
    keys = [getkey() for _ in range(5)]
    grads = [jax.tree.map(lambda a, k=k: jax.random.normal(k, a.shape), params) for k in keys]
    it1, it2 = iter(grads), iter(grads)
    p1 = _run(ours, params, lambda p: next(it1), 5)
    p2 = _run(ref, params, lambda p: next(it2), 5)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if form == "adamw":
        assert "weight_decay" in optim.get_hyperparams(ours.init(params))


def test_coupled_l2_and_decoupled_decay_differ_as_closed_form_on_a_quadratic():
    # Loss 0.5 * a * w^2 per coordinate, constant rate, Adam with b1 = 0.9, b2 = 0.999.
    a = jnp.array([1e-3, 1.0, 30.0, 0.0])
    w0 = jnp.array([2.0, -1.5, 0.5, 4.0])
    lam, lr, eps = 0.5, 0.01, 1e-8
    loss_grad = lambda p: {"w": a * p["w"]}

    def chain(**kw):
        return optim.mitigation_chain(
            optimizer="adam", learning_rate=lr, total_steps=10, end_lr_fraction=1.0, **kw
        )

    coupled = _run(chain(weight_decay=lam), {"w": w0}, loss_grad, 1)["w"]
    decoupled = _run(chain(decoupled_weight_decay=lam), {"w": w0}, loss_grad, 1)["w"]
    # Closed form of Adam's first step: m_hat = g, v_hat = g^2, update g / (|g| + eps).
    g_c = (a + lam) * w0
    np.testing.assert_allclose(coupled, w0 - lr * g_c / (np.abs(g_c) + eps), rtol=1e-6)
    g_d = a * w0
    np.testing.assert_allclose(
        decoupled, w0 - lr * (g_d / (np.abs(g_d) + eps) + lam * w0), rtol=1e-6
    )
    # Coupled L2 is normalised away: every coordinate moves by lr, whatever lam and |w|;
    # decoupled decay moves it by lr * (1 + lam * |w|), and by lr * lam * |w| where the loss
    # is flat (a = 0: Adam's own update is exactly 0 there).
    np.testing.assert_allclose(np.abs(coupled - w0), lr, rtol=1e-5)
    np.testing.assert_allclose(decoupled[3], w0[3] * (1 - lr * lam), rtol=1e-6)

    # Many steps on the flat coordinate alone (a = 0): the decoupled decay is geometric,
    # w_t = w0 (1 - lr lam)^t exactly; coupled L2 through Adam steps about lr per step (its
    # gradient lam * w changes slowly, so m_hat / sqrt(v_hat) stays near 1), independent of lam.
    flat = lambda p: {"w": jnp.zeros_like(p["w"])}
    steps = 50
    w0f = jnp.array([4.0, 40.0])
    dec = _run(chain(decoupled_weight_decay=lam), {"w": w0f}, flat, steps)["w"]
    np.testing.assert_allclose(dec, w0f * (1 - lr * lam) ** steps, rtol=1e-5)
    for lam_c in (0.5, 5.0):
        cou = _run(chain(weight_decay=lam_c), {"w": w0f}, flat, steps)["w"]
        np.testing.assert_allclose(w0f - cou, lr * steps, rtol=0.02)


def test_decoupled_decay_is_a_vmap_axis(getkey):
    params = _tree(getkey())
    grads = jax.tree.map(lambda a: jax.random.normal(getkey(), a.shape), params)
    tx = optim.mitigation_chain(
        optimizer="adam",
        learning_rate=0.1,
        total_steps=10,
        end_lr_fraction=1.0,
        weight_decay=0.0,
        decoupled_weight_decay=0.0,
        record_norms=False,
    )
    settings_ = jnp.array([[0.0, 0.0], [0.3, 0.0], [0.0, 0.3]])

    def one(hp):
        state = optim.set_hyperparams(
            tx.init(params), weight_decay=hp[0], decoupled_weight_decay=hp[1]
        )
        return tx.update(grads, state, params)[0]

    with jax.numpy_dtype_promotion("standard"):
        batched = jax.jit(jax.vmap(one))(settings_)
        first = lambda ref_tx: ref_tx.update(grads, ref_tx.init(params), params)[0]
        # Independent sources: optax's Adam, Adam after add_decayed_weights, and AdamW.
        refs = [
            first(optax.adam(0.1)),
            first(optax.chain(optax.add_decayed_weights(0.3), optax.adam(0.1))),
            first(optax.adamw(0.1, weight_decay=0.3)),
        ]
    for i, ref in enumerate(refs):
        got = jax.tree.map(lambda u, i=i: u[i], batched)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_record_gradient_norms_per_layer_and_passthrough(getkey):
    grads = _tree(getkey())
    tx = optax.chain(optim.record_gradient_norms(), optax.sgd(0.1))
    state = tx.init(grads)
    assert all(float(v) == 0.0 for v in optim.recorded_norms(state).values())
    upd, state = jax.jit(tx.update)(grads, state)
    norms = optim.recorded_norms(state)
    expected = {
        "input/W": np.linalg.norm(grads["input"]["W"]),
        "input/b": 0.0,
        "readout/W": np.linalg.norm(grads["readout"]["W"]),
        **{f"hidden/{i}/W": np.linalg.norm(grads["hidden"]["W"][i]) for i in range(4)},
    }
    assert set(norms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(norms[name], value, rtol=1e-6)
    # The recorder itself changes nothing: sgd's update is -0.1 g.
    for u, g in zip(jax.tree.leaves(upd), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(u, -0.1 * g, rtol=1e-6)


def test_record_gradient_norms_custom_group_fn_and_vmap(getkey):
    group_fn = lambda g: {"total": optax.tree.norm(g)}
    tx = optim.record_gradient_norms(group_fn)
    grads = jax.vmap(lambda k: _tree(k))(jax.random.split(getkey(), 3))
    state = jax.jit(jax.vmap(tx.init))(grads)
    _, state = jax.jit(jax.vmap(tx.update))(grads, state)
    per_run = [_np_norm(jax.tree.map(lambda a, i=i: a[i], grads)) for i in range(3)]
    np.testing.assert_allclose(state.norms["total"], per_run, rtol=1e-6)


def test_group_norms_survive_huge_finite_values():
    # 1e30**2 overflows float32; the per-layer and per-leaf norms must stay finite and exact:
    # sqrt(16) * 1e30 per 4x4 layer, sqrt(3) * 1e30 for the vector (closed form).
    tree = {"hidden": {"W": jnp.full((2, 4, 4), 1e30, jnp.float32)}, "b": jnp.full(3, -1e30)}
    norms = optim.group_norms(tree)
    assert not np.isfinite(float(jnp.linalg.norm(tree["hidden"]["W"][0])))
    np.testing.assert_allclose([norms["hidden/0/W"], norms["hidden/1/W"]], [4e30, 4e30], rtol=1e-6)
    np.testing.assert_allclose(norms["b"], math.sqrt(3) * 1e30, rtol=1e-6)
    bad = optim.group_norms({"hidden": {"W": jnp.array([[1.0, jnp.inf], [jnp.nan, 1.0]])}})
    assert np.isinf(float(bad["hidden/0/W"])) and np.isnan(float(bad["hidden/1/W"]))


def test_group_norms_nested_and_explicit_stacks(getkey):
    k1, k2 = getkey(), getkey()
    tree = {
        "params": {
            "hidden": {"W": jax.random.normal(k1, (3, 4, 4)), "b": jnp.arange(6.0).reshape(3, 2)},
            "trunk": {"kernel": jax.random.normal(k2, (2, 5, 5))},
        }
    }
    # Default: a "hidden" entry anywhere marks a stack; "trunk" is one leaf.
    norms = optim.group_norms(tree)
    expected = {
        **{
            f"params/hidden/{i}/W": np.linalg.norm(tree["params"]["hidden"]["W"][i])
            for i in range(3)
        },
        **{f"params/hidden/{i}/b": np.hypot(2 * i, 2 * i + 1) for i in range(3)},
        "params/trunk/kernel": np.linalg.norm(tree["params"]["trunk"]["kernel"]),
    }
    assert set(norms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(norms[name], value, rtol=1e-6)
    # Explicit prefixes replace the default: the trunk is split, the hidden leaves are not.
    norms = optim.group_norms(tree, stacked=[("params", "trunk")])
    np.testing.assert_allclose(
        norms["params/trunk/1/kernel"],
        np.linalg.norm(tree["params"]["trunk"]["kernel"][1]),
        rtol=1e-6,
    )
    np.testing.assert_allclose(norms["params/hidden/b"], np.sqrt(np.sum(np.arange(6.0) ** 2)))


def test_set_hyperparams_rejects_absent_names():
    tx = optim.mitigation_chain(learning_rate=0.1, total_steps=10)
    state = tx.init({"w": jnp.zeros(2)})
    with pytest.raises(GradjaxInputError, match="clip"):
        optim.set_hyperparams(state, clip=1.0)
    with pytest.raises(GradjaxInputError, match="l2"):
        optim.set_hyperparams(state, l2=0.1)
    new = optim.set_hyperparams(state, learning_rate=0.25)
    assert float(optim.get_hyperparams(new)["learning_rate"]) == 0.25
    assert float(optim.get_hyperparams(state)["learning_rate"]) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"clip": 0.0}, "clip"),
        ({"clip": -1.0}, "clip"),
        ({"warmup_steps": 200}, "warmup_steps"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"momentum": 1.0}, "momentum"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, field):
    base = {"learning_rate": 0.1, "total_steps": 100}
    with pytest.raises(GradjaxInputError, match=field):
        optim.mitigation_chain(**{**base, **kwargs})
    tkw = {("steps" if k == "total_steps" else k): v for k, v in {**base, **kwargs}.items()}
    with pytest.raises(GradjaxInputError, match=field):
        TrainConfig(**tkw)


def test_decoupled_decay_bad_input():
    base = {"learning_rate": 0.1, "total_steps": 100}
    with pytest.raises(GradjaxInputError, match="decoupled_weight_decay"):
        optim.mitigation_chain(**base, decoupled_weight_decay=-1.0)
    with pytest.raises(GradjaxInputError, match="decoupled_weight_decay.*adamw"):
        optim.mitigation_chain(**base, optimizer="adamw", decoupled_weight_decay=0.1)
