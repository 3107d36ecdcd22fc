"""The model zoo of examples/: gj.diagnose's per-block gradients and verdicts, each checked
against ||dL/da_l|| from jax.grad on a forward pass written out by hand with a zero added to
every block output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import gradjax as gj
from gradjax.utils.fitting import growth_rate


def _norms(grads):
    return np.array([float(jnp.linalg.norm(jnp.ravel(g))) for g in grads])


def _check(report, names, expect, verdict):
    assert report.activation_names == tuple(names)
    np.testing.assert_allclose(report.activation_grad_norms, expect, rtol=2e-4)
    assert report.growth_per_layer == pytest.approx(growth_rate(expect), rel=1e-3)
    assert report.verdict == verdict, report.summary()


def test_resnet_with_batchnorm_in_train_mode_linen():
    from examples.resnet_bn_linen import make

    model, variables, (x, y) = make(blocks=3, batch=8)
    report = gj.diagnose(model, variables, (x, y), "mse")

    def forward(module, x, es):
        h = nn.relu(module.stem_bn(module.stem(x)))
        for block, e in zip(module.body, es, strict=True):
            h = block(h) + e
        return module.head(jnp.mean(h, axis=(1, 2)))

    def loss(es):
        out, _ = nn.apply(forward, model, mutable=["batch_stats"])(variables, x, es)
        return gj.mse_loss(out, y)

    zeros = [jnp.zeros((8, 8, 8, 8))] * 3
    expect = _norms(jax.grad(loss)(zeros))
    _check(report, [f"body_{i}" for i in range(3)], expect, "healthy")
    assert report.context["norm"] == "batch" and report.context["residual"] is True


@pytest.mark.parametrize("variant", ["preln", "postln"])
def test_transformers_nnx(variant):
    module = __import__(f"examples.transformer_{variant}", fromlist=["make"])
    model, _, (x, y) = module.make(depth=4, width=16, batch=4)
    report = gj.diagnose(model, None, (x, y), "mse")

    def loss(es):
        h = model.embed(x)
        for block, e in zip(model.blocks, es, strict=True):
            h = block(h) + e
        return gj.mse_loss(model.head(jnp.mean(model.ln(h), axis=1)), y)

    expect = _norms(jax.grad(loss)([jnp.zeros((4, 8, 16))] * 4))
    _check(report, [f"blocks/{i}" for i in range(4)], expect, "healthy")
    assert report.context["norm"] == "layer" and report.context["residual"] is True


def test_deep_mlp_with_dropout_nnx():
    from examples.mlp_dropout_nnx import KEEP, SIGMA_W, make

    model, _, (x, y) = make(depth=12, width=64, batch=32)
    report = gj.diagnose(model, None, (x, y), "mse", hints={"activation": "tanh"})
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(es):
        # The same dropout masks: a copy from the same RNG state, the same calls in order.
        m = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))
        h = m.inp(x)
        for layer, e in zip(m.layers, es, strict=True):
            h = m.drop(jax.nn.tanh(layer(h) + e))
        return gj.mse_loss(m.out(h), y)

    expect = _norms(jax.grad(loss)([jnp.zeros((32, 64))] * 12))
    _check(report, [f"layers/{i}" for i in range(12)], expect, "vanishing")
    # Mean field: chi_1 = sigma_w^2 / keep at q* = 0 (tanh, sigma_b = 0): 0.53 per layer;
    # finite width (64) and 12 layers scatter the fit by a few per cent.
    assert report.growth_per_layer == pytest.approx(np.sqrt(SIGMA_W**2 / KEEP), rel=0.08)
    assert any("sigma_w^2 = 1" in s for s in report.suggestions)


def test_scan_stack_linen():
    from examples.scan_stack_linen import Layer, make

    depth, width = 32, 64
    model, variables, (x, y) = make(depth=depth, width=width, batch=32)
    report = gj.diagnose(model, variables, (x, y), "mse", hints={"activation": "tanh"})
    p = variables["params"]

    def loss(es):
        h = nn.Dense(width).apply({"params": p["Dense_0"]}, x)
        for i, e in enumerate(es):
            layer = jax.tree.map(lambda v, i=i: v[i], p["stack"])
            h, _ = Layer(width).apply({"params": layer}, h, None)
            h = h + e
        return gj.mse_loss(nn.Dense(1).apply({"params": p["Dense_1"]}, h), y)

    expect = _norms(jax.grad(loss)([jnp.zeros((32, width))] * depth))
    _check(report, [f"stack/{i}" for i in range(depth)], expect, "exploding")
    assert report.context["residual"] is False and report.context["norm"] is None
    # The one weight-scale target is the critical init of tanh at sigma_b = 0.
    assert any("sigma_w^2 = 1;" in s for s in report.suggestions)


def test_lstm_classifier_time_axis_linen():
    # Truth: the same LSTM equations as a hand-written scan, a zero perturbation added to the
    # lower layer's hidden state after every step (dropout off, so nothing is random).
    from hand_written import lstm_step

    from examples.lstm_classifier import LSTMClassifier, make

    model, variables, (tokens, labels), options = make(steps=16, batch=8)
    assert set(options) == {"rngs", "apply_kwargs"}
    p = variables["params"]
    cells = [p["OptimizedLSTMCell_0"], p["OptimizedLSTMCell_1"]]

    def loss(e):
        seq = jnp.swapaxes(p["Embed_0"]["embedding"][tokens], 0, 1)
        for layer, cell in enumerate(cells):

            def body(carry, inputs, cell=cell, layer=layer):
                c, h = lstm_step(cell, *carry, inputs[0])
                h = h + inputs[1] if layer == 0 else h
                return (c, h), h

            zeros = jnp.zeros((tokens.shape[0], 32))
            _, seq = jax.lax.scan(body, (zeros, zeros), (seq, e))
        logits = seq[-1] @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(labels.shape[0]), labels])

    truth = jax.grad(loss)(jnp.zeros((16, tokens.shape[0], 32)))
    truth = np.sqrt(np.sum(np.asarray(truth, np.float64) ** 2, axis=(1, 2)))
    quiet = LSTMClassifier(dropout=0.0)
    report = gj.diagnose(quiet, variables, (tokens, labels), "xent", **options)
    lower = report.time_axes[0]
    assert lower.name == "lower"
    np.testing.assert_allclose(lower.norms, truth, rtol=1e-4)
    assert report.axis_verdicts["time"] == "vanishing" == report.verdict
    # With the factory's RNG and train flag (dropout on): the same verdict.
    noisy = gj.diagnose(model, variables, (tokens, labels), "xent", **options)
    assert noisy.axis_verdicts["time"] == "vanishing"
