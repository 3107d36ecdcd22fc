"""The time axis of recurrent models, against gradients computed by hand.

The reference for every per-step norm is a scan written out here, step by step, with a zero
perturbation ``e_t`` added to the hidden state after step ``t``: ``dL/de_t`` is ``dL/dh_t``.
The models are written as Flax's own examples write them (``nn.RNN`` around a cell, a
``nn.Bidirectional`` wrapper, ``nnx.RNN``, ``jax.lax.scan`` in a pure function).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import gradjax as gj

T, B, D, H = 40, 4, 3, 8
X = jax.random.normal(jax.random.key(1), (B, T, D))
Y = jnp.array([0, 1, 0, 1])


def _xent(logits, y):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


def _per_step(g):
    """``||g_t||`` over everything but the leading time axis, in float64."""
    g = np.asarray(g, np.float64)
    return np.sqrt(np.sum(g.reshape(g.shape[0], -1) ** 2, axis=1))


def _geometric_growth(norms):
    return float(np.exp(np.mean(np.log(norms[:-1]) - np.log(norms[1:]))))


class TanhRNN(nn.Module):
    scale: float

    @nn.compact
    def __call__(self, x):
        cell = nn.SimpleCell(H, recurrent_kernel_init=nn.initializers.orthogonal(self.scale))
        h = nn.RNN(cell)(x)
        return nn.Dense(2)(h[:, -1])


def _tanh_rnn_truth(params):
    cell, head = params["SimpleCell_0"], params["Dense_0"]

    def loss(e):
        def step(h, inputs):
            x_t, e_t = inputs
            h = jnp.tanh(x_t @ cell["i"]["kernel"] + cell["i"]["bias"] + h @ cell["h"]["kernel"])
            return h + e_t, None

        h, _ = jax.lax.scan(step, jnp.zeros((B, H)), (jnp.swapaxes(X, 0, 1), e))
        return _xent(h @ head["kernel"] + head["bias"], Y)

    return _per_step(jax.grad(loss)(jnp.zeros((T, B, H))))


@pytest.mark.parametrize(
    ("scale", "expected"), [(0.5, "vanishing"), (1.0, "vanishing"), (3.0, "exploding")]
)
def test_tanh_rnn_time_axis_equals_the_hand_written_scan(scale, expected):
    model = TanhRNN(scale)
    variables = model.init(jax.random.key(0), X)
    truth = _tanh_rnn_truth(variables["params"])
    report = gj.diagnose(model, variables, (X, Y), "xent")
    axis = report.time_axis
    np.testing.assert_allclose(axis.norms, truth, rtol=1e-5)
    np.testing.assert_array_equal(axis.steps, np.arange(T))
    assert axis.growth_per_step == pytest.approx(_geometric_growth(truth), rel=1e-5)
    # The verdict's thresholds on the truth: the earliest third's geometric mean against
    # the last step (one decade either way).
    first_third = np.exp(np.mean(np.log(truth[: T // 3]))) / truth[-1]
    assert (first_third < 0.1, first_third > 10) == (
        expected == "vanishing",
        expected == "exploding",
    )
    assert report.verdict == expected
    assert report.axis_verdicts == {"time": expected}
    # The cell's two Dense layers run inside the recurrence: they are not blocks.
    assert not any("cell" in name for name in report.activation_names)
    assert report.context["residual"] is not True


class TwoLayerLSTM(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.RNN(nn.LSTMCell(H), name="lower")(x)
        h = nn.RNN(nn.LSTMCell(H), name="upper")(h)
        return nn.Dense(2)(h[:, -1])


def _lstm_step(p, c, h, x_t):
    def gate(name, act):
        hidden = h @ p["h" + name]["kernel"] + p["h" + name]["bias"]
        return act(x_t @ p["i" + name]["kernel"] + hidden)

    i, f = gate("i", jax.nn.sigmoid), gate("f", jax.nn.sigmoid)
    g, o = gate("g", jnp.tanh), gate("o", jax.nn.sigmoid)
    c = f * c + i * g
    return c, o * jnp.tanh(c)


def test_lstm_hidden_and_cell_gradients_equal_the_hand_written_scan():
    model = TwoLayerLSTM()
    variables = model.init(jax.random.key(0), X)
    p = variables["params"]
    cells = [p[k] for k in sorted(p) if k.startswith("LSTMCell")]

    def loss(e_h, e_c):
        seq = jnp.swapaxes(X, 0, 1)
        for layer, cell in enumerate(cells):

            def step(carry, inputs, cell=cell, layer=layer):
                c, h = carry
                x_t, eh, ec = inputs
                c, h = _lstm_step(cell, c, h, x_t)
                h, c = h + eh[layer], c + ec[layer]
                return (c, h), h

            zeros = jnp.zeros((B, H))
            _, seq = jax.lax.scan(step, (zeros, zeros), (seq, e_h, e_c))
        return _xent(seq[-1] @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], Y)

    zeros = jnp.zeros((T, 2, B, H))
    gh, gc = jax.grad(loss, argnums=(0, 1))(zeros, zeros)
    report = gj.diagnose(model, variables, (X, Y), "xent")
    assert [a.name for a in report.time_axes] == ["lower", "upper"]
    for layer, axis in enumerate(report.time_axes):
        np.testing.assert_allclose(axis.norms, _per_step(gh[:, layer]), rtol=1e-4)
        # The cell state's gradient after the last step is exactly zero (only h is read).
        np.testing.assert_allclose(axis.state_norms, _per_step(gc[:, layer]), rtol=1e-4, atol=1e-12)
    assert set(report.axis_verdicts) == {"depth", "time"}
    assert report.activation_names == ("lower", "upper")


class BiLSTM(nn.Module):
    @nn.compact
    def __call__(self, x):
        both = nn.Bidirectional(nn.RNN(nn.OptimizedLSTMCell(H)), nn.RNN(nn.OptimizedLSTMCell(H)))
        return nn.Dense(2)(both(x).mean(axis=1))


def test_bidirectional_is_two_chains_over_time_not_two_layers():
    model = BiLSTM()
    variables = model.init(jax.random.key(0), X)
    report = gj.diagnose(model, variables, (X, Y), "xent")
    assert len(report.time_axes) == 2
    assert "depth" not in report.axis_verdicts  # the directions run side by side
    assert report.series == "parameters"
    assert report.context["residual"] is not True
    for axis in report.time_axes:
        assert len(axis.norms) == T and np.all(axis.norms > 0)


def test_pure_function_scan_and_its_hidden_state():
    w = 0.5 * jnp.eye(H)
    params = {"U": jax.random.normal(jax.random.key(3), (D, H)), "W": w}
    params["V"] = jax.random.normal(jax.random.key(4), (H, 2))

    def rnn(p, x, e=None):
        def step(h, inputs):
            x_t, e_t = inputs
            h = jnp.tanh(x_t @ p["U"] + h @ p["W"]) + e_t
            return h, h

        e = jnp.zeros((T, x.shape[0], H)) if e is None else e
        h, _ = jax.lax.scan(step, jnp.zeros((x.shape[0], H)), (jnp.swapaxes(x, 0, 1), e))
        return h @ p["V"]

    truth = _per_step(jax.grad(lambda e: _xent(rnn(params, X, e), Y))(jnp.zeros((T, B, H))))
    report = gj.diagnose(rnn, params, (X, Y), "xent")
    np.testing.assert_allclose(report.time_axis.norms, truth, rtol=1e-5)
    assert report.verdict == "vanishing"


class NnxRNN(nnx.Module):
    def __init__(self, rngs):
        self.rnn = nnx.RNN(nnx.SimpleCell(D, H, rngs=rngs), rngs=rngs)
        self.head = nnx.Linear(H, 2, rngs=rngs)

    def __call__(self, x):
        return self.head(self.rnn(x)[:, -1])


def test_nnx_rnn_time_axis_matches_the_hand_written_scan():
    model = NnxRNN(nnx.Rngs(0))
    _, state, _ = nnx.split(model, nnx.Param, ...)
    p = nnx.to_pure_dict(state)
    cell = p["rnn"]["cell"]

    def loss(e):
        def step(h, inputs):
            x_t, e_t = inputs
            pre = x_t @ cell["dense_i"]["kernel"] + cell["dense_i"]["bias"]
            h = jnp.tanh(pre + h @ cell["dense_h"]["kernel"]) + e_t
            return h, None

        h, _ = jax.lax.scan(step, jnp.zeros((B, H)), (jnp.swapaxes(X, 0, 1), e))
        return _xent(h @ p["head"]["kernel"] + p["head"]["bias"], Y)

    truth = _per_step(jax.grad(loss)(jnp.zeros((T, B, H))))
    report = gj.diagnose(model, None, (X, Y), "xent")
    np.testing.assert_allclose(report.time_axis.norms, truth, rtol=1e-5)


def test_time_axis_in_the_summary_and_the_json():
    model = TanhRNN(3.0)
    variables = model.init(jax.random.key(0), X)
    report = gj.diagnose(model, variables, (X, Y), "xent")
    text = report.summary()
    assert "verdict by axis: time: exploding" in text
    assert f"RNN_0: {T} steps" in text
    data = report.to_dict()
    assert data["axis_verdicts"] == {"time": "exploding"}
    assert data["time_axes"][0]["growth_per_step"] == pytest.approx(
        report.time_axis.growth_per_step
    )
    assert "clip_by_global_norm" in " ".join(report.suggestions)
