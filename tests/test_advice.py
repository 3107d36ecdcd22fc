"""Every suggestion against the measurement it claims to come from.

Models are written as their authors write them (a post-activation ResNet with BatchNorm and
projection shortcuts, a plain CNN, a tanh MLP, a BatchNorm stack); each suggestion is checked
against an independent measurement: the full-batch gradient from ``jax.grad`` for the clip
threshold, a sweep of the same model for the weight scale, the structure by construction
for residual blocks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import gradjax as gj
from gradjax.utils.fitting import crossing, growth_per_layer


class ResBlock(nn.Module):
    """Post-activation basic block; a 1x1 projection shortcut where the shape changes."""

    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = lambda name=None: nn.BatchNorm(use_running_average=not train, name=name)
        y = nn.relu(norm()(nn.Conv(self.filters, (3, 3), self.strides)(x)))
        y = norm()(nn.Conv(self.filters, (3, 3))(y))
        residual = x
        if residual.shape != y.shape:
            residual = nn.Conv(self.filters, (1, 1), self.strides, name="conv_proj")(x)
            residual = norm("norm_proj")(residual)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x)))
        for i, filters in enumerate((8, 16, 16, 32)):
            x = ResBlock(filters, 2 if i in (1, 3) else 1)(x, train)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class PlainCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        for filters in (16, 16, 16):
            x = nn.relu(nn.Conv(filters, (3, 3))(x))
        return nn.Dense(10)(x.mean(axis=(1, 2)))


IMAGES = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
LABELS = jnp.arange(8) % 10


def _xent(logits, y):
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(y.shape[0]), y])


def test_resnet_is_residual_and_its_clip_threshold_is_the_full_batch_norm():
    model = ResNet()
    variables = model.init(jax.random.key(1), IMAGES)
    report = gj.diagnose(model, variables, (IMAGES, LABELS), "xent", mutable=["batch_stats"])
    assert report.context["residual"] is True
    assert report.activation_names == tuple(f"ResBlock_{i}" for i in range(4))

    # Independent: the full-batch gradient in train mode (batch statistics), by jax.grad.
    def loss(params):
        out, _ = model.apply({**variables, "params": params}, IMAGES, mutable=["batch_stats"])
        return _xent(out, LABELS)

    g = jax.grad(loss)(variables["params"])
    full = math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in jax.tree.leaves(g)))
    assert report.global_norm == pytest.approx(full, rel=1e-4)
    assert full <= report.clip_threshold <= 2 * full
    assert f"clip_by_global_norm({report.clip_threshold:.3g})" in " ".join(report.suggestions)
    assert not any("add residual connections" in s for s in report.suggestions)


def test_plain_cnn_and_rnn_are_not_residual():
    model = PlainCNN()
    variables = model.init(jax.random.key(1), IMAGES)
    report = gj.diagnose(model, variables, (IMAGES, LABELS), "xent")
    assert report.context["residual"] is False

    class TanhRNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(nn.RNN(nn.SimpleCell(8))(x)[:, -1])

    x = jax.random.normal(jax.random.key(2), (4, 12, 3))
    rnn = TanhRNN()
    report = gj.diagnose(rnn, rnn.init(jax.random.key(0), x), (x, jnp.arange(4) % 2), "xent")
    assert report.context["residual"] is False


def test_one_sharp_drop_between_two_blocks_is_not_healthy():
    # Ten blocks that pass the gradient unchanged but one that divides it by 39: the
    # regions' geometric means stay within a decade, the single step does not.
    def model(p, x, perturbations):
        for i in range(10):
            gain = 39.0 if i == 5 else 1.0
            x = gain * (x @ p["w"]) + perturbations[f"b{i}"]
        return x

    params = {"w": jnp.eye(4)}
    zeros = {f"b{i}": jnp.zeros((8, 4)) for i in range(10)}
    x = jnp.ones((8, 4))
    report = gj.diagnose(model, params, (x, jnp.zeros((8, 4))), "mse", perturbations=zeros)
    norms = report.activation_grad_norms
    assert norms[4] / norms[5] == pytest.approx(39.0, rel=1e-6)  # dL/da_4 = 39 dL/da_5
    assert report.verdict == "exploding"
    assert any(r.name == "b4 -> b5" and r.verdict == "exploding" for r in report.regions)


class TanhMLP(nn.Module):
    scale: float

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.variance_scaling(self.scale**2, "fan_in", "normal")
        for _ in range(12):
            x = nn.tanh(nn.Dense(64, kernel_init=init)(x))
        return nn.Dense(1)(x)


def test_weight_scale_advice_is_where_a_sweep_of_the_same_model_crosses_one():
    x = jax.random.normal(jax.random.key(0), (32, 64))
    y = jnp.zeros((32, 1))
    model = TanhMLP(0.5)
    variables = model.init(jax.random.key(1), x)
    report = gj.diagnose(model, variables, (x, y), "mse")
    assert report.verdict == "vanishing"
    suggested = report.scale_probe.critical
    assert f"multiply every kernel by {suggested:.3g}" in report.suggestions[0]
    # Independent: gradjax's sweep of the same model over seeds x kernel scale.
    net = gj.boundary.sweepable(model, variables, x)
    scales = 2.0 ** np.linspace(-2, 2, 9)
    result = gj.sweep(
        net, gj.probes.block_gradient_probe(net, (x, y), "mse"), seeds=4, sigma_w=scales,
        progress=False,
    )  # fmt: skip
    growth = np.nanmean(growth_per_layer(np.asarray(result["block_grad_norms"]), axis=-1), 0)
    assert suggested == pytest.approx(crossing(scales, growth), rel=0.1)


class BatchNormStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        for _ in range(24):
            x = nn.relu(nn.BatchNorm(use_running_average=False)(nn.Dense(64)(x)))
        return nn.Dense(1)(x)


def test_a_normalised_stack_gets_no_weight_scale_advice_and_the_reason():
    x = jax.random.normal(jax.random.key(0), (32, 64))
    y = jax.random.normal(jax.random.key(2), (32, 1))
    model = BatchNormStack()
    variables = model.init(jax.random.key(1), x)
    report = gj.diagnose(model, variables, (x, y), "mse", mutable=["batch_stats"])
    assert report.verdict == "exploding"  # deep BatchNorm stacks explode at init
    probe = report.scale_probe
    assert probe.critical is None
    assert max(probe.growth) / min(probe.growth) < 1.05  # BatchNorm cancels the scale
    assert "does not depend on the kernel scale" in report.suggestions[0]
    assert math.isnan(report.clip_threshold)  # the norms of an exploding model


def test_warm_up_advice_for_sgd_reads_the_measured_sharpness():
    # Linear regression with gradjax's mse (half the squared error, mean over the batch):
    # the Hessian in each output column is X^T X / n, so the sharpness is its top eigenvalue.
    x = jax.random.normal(jax.random.key(0), (32, 6)) * jnp.arange(1.0, 7.0)
    y = jnp.zeros((32, 2))
    model = lambda p, x: x @ p["w"]
    params = {"w": 0.1 * jnp.ones((6, 2))}
    top = float(np.linalg.eigvalsh(np.asarray(x.T @ x, np.float64) / 32)[-1])
    safe = gj.diagnose(model, params, (x, y), "mse", lr=1.0 / top, optimizer="sgd")
    assert safe.step_probe.sharpness == pytest.approx(top, rel=1e-3)
    assert not any("sharpness at init" in s for s in safe.suggestions)  # lr x sharpness = 1
    risky = gj.diagnose(model, params, (x, y), "mse", lr=3.0 / top, optimizer="sgd")
    assert f"lr x sharpness = {3.0:.3g} is above 2" in risky.suggestions[0]


def test_warm_up_advice_for_adam_reads_the_preconditioned_sharpness():
    # The same regression: Adam's first-step preconditioner is P = |g| + eps, and its
    # stability reads lr x top eigenvalue of P^-1/2 H P^-1/2 against 38 (beta1 = 0.9).
    x = jax.random.normal(jax.random.key(0), (32, 6)) * jnp.arange(1.0, 7.0)
    y = jax.random.normal(jax.random.key(3), (32, 2))
    model = lambda p, x: x @ p["w"]
    params = {"w": 0.1 * jnp.ones((6, 2))}
    xs, ys, w = (np.asarray(v, np.float64) for v in (x, y, params["w"]))
    gram = xs.T @ xs / 32
    grad = xs.T @ (xs @ w - ys) / 32  # (6, 2), row-major like the flattened kernel
    hessian = np.kron(gram, np.eye(2))  # entry ((i, c), (j, d)) = gram[i, j] * [c == d]
    d = 1.0 / np.sqrt(np.abs(grad).ravel() + 1e-8)
    top = float(np.linalg.eigvalsh(d[:, None] * hessian * d[None, :])[-1])
    safe = gj.diagnose(model, params, (x, y), "mse", lr=10.0 / top, optimizer="adam")
    assert safe.step_probe.sharpness == pytest.approx(top, rel=1e-3)
    assert safe.step_probe.stability_limit == 38.0
    assert not any("preconditioned sharpness at init" in s for s in safe.suggestions)
    risky = gj.diagnose(model, params, (x, y), "mse", lr=60.0 / top, optimizer="adam")
    assert any(f"lr x preconditioned sharpness = {60.0:.3g} is above 38" in s
               for s in risky.suggestions)  # fmt: skip


class TinyBlock(nn.Module):
    norm: bool
    gain: float

    @nn.compact
    def __call__(self, h):
        init = nn.initializers.variance_scaling(self.gain**2, "fan_in", "normal")
        y = nn.LayerNorm()(h) if self.norm else h
        h = h + nn.MultiHeadDotProductAttention(num_heads=2, kernel_init=init)(y, y)
        y = nn.LayerNorm()(h) if self.norm else h
        y = nn.Dense(32, kernel_init=init)(y)
        return h + nn.Dense(16, kernel_init=init)(nn.gelu(y))


class TinyLM(nn.Module):
    norm: bool
    gain: float

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(32, 16)(tokens)
        for _ in range(4):
            h = TinyBlock(self.norm, self.gain)(h)
        return nn.Dense(32)(h)


def _token_xent(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[..., None], -1))


@pytest.mark.parametrize("norm", [False, True])
def test_transformer_scale_advice_against_a_sweep_of_the_same_model(norm):
    tokens = jax.random.randint(jax.random.key(0), (8, 6), 0, 32)
    y = jax.random.randint(jax.random.key(2), (8, 6), 0, 32)
    model = TinyLM(norm, 30.0 if norm else 3.0)
    variables = model.init(jax.random.key(1), tokens)
    report = gj.diagnose(model, variables, (tokens, y), _token_xent)
    assert report.verdict == "exploding"
    net = gj.boundary.sweepable(model, variables, tokens)
    scales = np.asarray(report.scale_probe.scales)
    probe = gj.probes.block_gradient_probe(net, (tokens, y), _token_xent)
    result = gj.sweep(net, probe, seeds=2, sigma_w=scales, progress=False)
    growth = np.nanmean(growth_per_layer(np.asarray(result["block_grad_norms"]), axis=-1), 0)
    # Residual paths keep the growth above 1: neither the probe nor the sweep crosses it.
    assert report.scale_probe.critical is None and crossing(scales, growth) is None
    bound = 10.0 ** (1 / 3)  # growth^(blocks - 1) inside the exploding threshold, 4 blocks
    if not norm:
        # Without LayerNorm the growth falls with the kernels towards 1: the suggested
        # multiplier is the one nearest 1x where the sweep, too, is within the thresholds.
        within = report.scale_probe.within
        assert f"multiply every kernel by {within:.3g}" in report.suggestions[0]
        i = int(np.argmin(np.abs(scales - within)))
        assert growth[i] <= bound < growth[i + 1]
    else:
        # With LayerNorm the growth does not follow the kernel scale: no scale advice.
        assert report.scale_probe.within is None
        assert "does not change one way with the kernel scale" in report.suggestions[0]
        assert np.any(np.diff(np.log(growth)) < -0.05) and np.any(np.diff(np.log(growth)) > 0.05)
