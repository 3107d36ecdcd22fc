"""Matrix-free Hessian probe against the dense Hessian (jax.hessian + eigvalsh) in float64."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gradjax as gj
from gradjax.measure import hessian
from gradjax.utils.errors import GradjaxInputError


def _mlp_loss(key, widths=(6, 16, 12, 3), batch=32):
    """A small tanh MLP (a few hundred parameters) and its MSE loss on fixed random data."""
    keys = jax.random.split(key, len(widths) + 1)
    params = [
        {
            "W": jax.random.normal(k, (a, b), jnp.float64) / math.sqrt(a),
            "b": 0.1 * jnp.ones((b,), jnp.float64),
        }
        for k, a, b in zip(keys[:-2], widths[:-1], widths[1:], strict=True)
    ]
    x = jax.random.normal(keys[-2], (batch, widths[0]), jnp.float64)
    y = jax.random.normal(keys[-1], (batch, widths[-1]), jnp.float64)

    def loss(p):
        a = x
        for i, layer in enumerate(p):
            a = a @ layer["W"] + layer["b"]
            if i < len(p) - 1:
                a = jnp.tanh(a)
        return 0.5 * jnp.mean(jnp.sum((a - y) ** 2, axis=-1))

    return loss, params


def _dense(loss, params):
    flat, unravel = ravel_pytree(params)
    h = jax.hessian(lambda f: loss(unravel(f)))(flat)
    return np.linalg.eigvalsh(np.asarray(h)), float(np.trace(np.asarray(h))), flat.size


def test_sharpness_and_trace_match_dense_hessian(getkey, x64):
    loss, params = _mlp_loss(getkey())
    eig, trace, size = _dense(loss, params)
    assert 250 < size < 500
    est = jax.jit(lambda p, k: hessian.hessian_estimates(loss, p, k, steps=40, probes=16000))(
        params, getkey()
    )
    assert est.size == size
    # Lanczos: the top Ritz value is a lower bound and converges fast for the extreme eigenvalue.
    assert float(est.top_eigenvalue) == pytest.approx(eig[-1], rel=0.02)
    assert float(est.top_eigenvalue) <= eig[-1] * (1 + 1e-10)
    assert abs(float(est.top_eigenvalue) - eig[-1]) <= float(est.top_error) + 1e-12
    # Hutchinson: within 2% (16000 probes: a standard error of ~0.5% of the trace for this
    # net), and the stated standard error covers the actual error.
    assert float(est.trace) == pytest.approx(trace, rel=0.02)
    assert abs(float(est.trace) - trace) < 4 * float(est.trace_stderr)


def test_hessian_vector_product_matches_dense(getkey, x64):
    loss, params = _mlp_loss(getkey(), widths=(4, 8, 2), batch=8)
    flat, unravel = ravel_pytree(params)
    v = jax.random.normal(getkey(), flat.shape, jnp.float64)
    h = jax.hessian(lambda f: loss(unravel(f)))(flat)
    got = ravel_pytree(hessian.hessian_vector_product(loss, params, unravel(v)))[0]
    np.testing.assert_allclose(np.asarray(got), np.asarray(h @ v), rtol=1e-10, atol=1e-12)


def test_indefinite_quadratic_and_vmap_over_keys(getkey, x64):
    # Closed form: a quadratic 0.5 p^T A p has Hessian A; an indefinite A has a negative
    # eigenvalue that must not displace the largest one.
    a = np.diag([-5.0, -1.0, 0.5, 2.0, 3.0])
    loss = lambda p: 0.5 * p @ jnp.asarray(a) @ p
    keys = jax.random.split(getkey(), 3)
    tops = jax.vmap(lambda k: hessian.hessian_top_eigenvalue(loss, jnp.ones(5), k, steps=5))(keys)
    np.testing.assert_allclose(np.asarray(tops.value), 3.0, rtol=1e-10)
    # Rademacher probes give v^T A v = tr(A) exactly for a diagonal A.
    tr = hessian.hessian_trace(loss, jnp.ones(5), getkey(), probes=3)
    assert float(tr.value) == pytest.approx(-0.5, abs=1e-12)


def test_flax_variables_and_integer_leaves(getkey):
    # A Flax Linen model's variables: only the floating leaves are coordinates; an integer
    # leaf (a step counter) is held fixed. Reference: the dense Hessian in float32.
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(1)])
    x = jax.random.normal(getkey(), (16, 3))
    y = jax.random.normal(getkey(), (16, 1))
    variables = model.init(getkey(), x)
    state = {"vars": variables, "step": jnp.int32(3)}
    loss = lambda s: jnp.mean((model.apply(s["vars"], x) - y) ** 2)
    flat, unravel = ravel_pytree(variables)
    h = np.asarray(jax.hessian(lambda f: jnp.mean((model.apply(unravel(f), x) - y) ** 2))(flat))
    top = hessian.hessian_top_eigenvalue(loss, state, getkey(), steps=flat.size)
    assert float(top.value) == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-3)


def test_bad_input_raises():
    with pytest.raises(GradjaxInputError, match="steps"):
        hessian.hessian_top_eigenvalue(lambda p: jnp.sum(p**2), jnp.ones(3), None, steps=0)
    with pytest.raises(GradjaxInputError, match="probes"):
        hessian.hessian_trace(lambda p: jnp.sum(p**2), jnp.ones(3), None, probes=1)
    with pytest.raises(GradjaxInputError, match="shape"):
        hessian.hessian_estimates(lambda p: p**2, jnp.ones(3), jax.random.key(0))
    with pytest.raises(GradjaxInputError, match="params"):
        hessian.hessian_trace(lambda p: jnp.sum(p), jnp.arange(3), jax.random.key(0))
    assert gj.errors.GradjaxInputError is GradjaxInputError
