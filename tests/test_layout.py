"""The layout accessors against the raw parameter dict they own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.nets import layout
from gradjax.utils.errors import GradjaxInputError


def _params(getkey, residual=None):
    net = gj.build(gj.NetConfig(depth=4, width=5, input_dim=3, out_dim=2, residual=residual))
    return net.init(getkey())


def test_accessors_read_the_raw_groups(getkey):
    p = _params(getkey)
    assert layout.depth(p) == 4
    assert layout.input_layer(p) is p["input"]
    assert layout.readout_weight(p) is p["readout"]["W"]
    np.testing.assert_array_equal(layout.layer_weight(p, 0), p["input"]["W"])
    for l in range(1, 4):
        np.testing.assert_array_equal(layout.layer_weight(p, l), p["hidden"]["W"][l - 1])
        np.testing.assert_array_equal(layout.layer(p, l)["b"], p["hidden"]["b"][l - 1])
    np.testing.assert_array_equal(layout.hidden_weights(p), p["hidden"]["W"])
    with pytest.raises(GradjaxInputError, match="index"):
        layout.layer(p, 4)


def test_layer_norms_match_numpy(getkey):
    p = _params(getkey)
    want = [np.linalg.norm(p["input"]["W"])] + [
        np.linalg.norm(np.asarray(p["hidden"]["W"][i])) for i in range(3)
    ]
    np.testing.assert_allclose(layout.layer_norms(p), want, rtol=1e-6)
    # Huge finite entries stay finite (a plain sum of squares would overflow in float32).
    big = layout.scale_layer(p, 2, 1e30, leaves=("W",))
    assert np.isfinite(np.asarray(layout.layer_norms(big))).all()
    np.testing.assert_allclose(layout.layer_norms(big)[2], 1e30 * want[2], rtol=1e-5)


def test_replace_and_scale_are_functional(getkey):
    p = _params(getkey)
    w = jnp.ones((5, 5))
    q = layout.replace_layer(p, 2, W=w)
    np.testing.assert_array_equal(q["hidden"]["W"][1], w)
    np.testing.assert_array_equal(q["hidden"]["W"][0], p["hidden"]["W"][0])
    assert not np.array_equal(p["hidden"]["W"][1], w)  # the input is unchanged
    s = layout.scale_layer(p, 0, 3.0)
    np.testing.assert_allclose(s["input"]["W"], 3 * p["input"]["W"], rtol=1e-6)
    np.testing.assert_allclose(s["input"]["b"], 3 * p["input"]["b"], rtol=1e-6)
    # Under jit with a traced factor.
    t = jax.jit(lambda p, c: layout.scale_layer(p, 3, c))(p, jnp.float32(2.0))
    np.testing.assert_allclose(t["hidden"]["W"][2], 2 * p["hidden"]["W"][2], rtol=1e-6)


def test_residual_gain(getkey):
    assert layout.residual_gain(_params(getkey)) is None
    p = _params(getkey, residual="skipinit")
    np.testing.assert_array_equal(layout.residual_gain(p), np.zeros(3))
    q = layout.with_residual_gain(p, 0.5)
    np.testing.assert_array_equal(q["hidden"]["gain"], np.full(3, 0.5, np.float32))
    with pytest.raises(GradjaxInputError, match="skipinit"):
        layout.with_residual_gain(_params(getkey), 1.0)
