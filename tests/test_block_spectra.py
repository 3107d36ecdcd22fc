"""Block-to-block Jacobian spectra of users' models against jax.jacrev + SVD on the same maps.

The reference maps are written the way a user would: each block's own module applied to the
previous block's output, read with Flax's ``capture_intermediates`` (Linen) or a hand loop
over the blocks (NNX), then ``jax.jacrev`` and NumPy's SVD in float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import gradjax as gj
from gradjax.utils.errors import GradjaxInputError


def _reference(block_fn, inputs, coupled=False):
    """Mean over examples of sigma_max and mean sigma^2 of each example's Jacobian."""
    if coupled:
        jac = np.asarray(jax.jacrev(block_fn)(inputs), np.float64)
        s = np.linalg.svd(jac.reshape(inputs.size, inputs.size), compute_uv=False)
        return s[0], np.mean(s**2)
    tops, means = [], []
    for example in inputs:
        jac = np.asarray(jax.jacrev(lambda a: block_fn(a[None])[0])(example), np.float64)
        s = np.linalg.svd(jac.reshape(example.size, -1), compute_uv=False)
        tops.append(s[0])
        means.append(np.mean(s**2))
    return np.mean(tops), np.mean(means)


def _check(found, references, *, exact=False):
    for i, (top, mean_sq) in enumerate(references):
        np.testing.assert_allclose(found.sigma_max[i], top, rtol=0.02)
        np.testing.assert_allclose(found.mean_sq[i], mean_sq, rtol=0.05)
        if exact:
            np.testing.assert_allclose(found.exact[i][:, 0].mean(), top, rtol=1e-4)


def test_linen_mlp_blocks_against_jacrev():
    model = nn.Sequential([nn.Dense(24), nn.tanh, nn.Dense(24), nn.tanh, nn.Dense(24)])
    x = jax.random.normal(jax.random.key(1), (4, 10))
    variables = model.init(jax.random.key(0), x)
    found = gj.block_spectra(gj.boundary.wrap(model, variables), x, exact_max_entries=1 << 12)
    assert found.names == ("layers_2", "layers_4") and not found.coupled
    _, seen = model.apply(variables, x, capture_intermediates=True)
    p = variables["params"]
    references = []
    for source, target in (("layers_0", "layers_2"), ("layers_2", "layers_4")):
        dense = lambda a, t=target: nn.Dense(24).apply({"params": p[t]}, jnp.tanh(a))
        references.append(_reference(dense, seen["intermediates"][source]["__call__"][0]))
    _check(found, references, exact=True)


class PreLNBlock(nn.Module):
    width: int

    @nn.compact
    def __call__(self, h):
        y = nn.LayerNorm()(h)
        y = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=self.width)(y)
        h = h + y
        y = nn.Dense(self.width)(nn.gelu(nn.Dense(2 * self.width)(nn.LayerNorm()(h))))
        return h + y


class TinyLM(nn.Module):
    width: int = 16
    depth: int = 3

    @nn.compact
    def __call__(self, tokens):
        h = nn.Embed(40, self.width)(tokens)
        for _ in range(self.depth):
            h = PreLNBlock(self.width)(h)
        return nn.Dense(40)(nn.LayerNorm()(h))


def test_pre_ln_transformer_blocks_from_token_ids_against_jacrev():
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, 40)
    model = TinyLM()
    variables = model.init(jax.random.key(0), tokens)
    boundary = gj.boundary.wrap(model, variables)
    found = gj.block_spectra(boundary, tokens)
    assert found.names == ("PreLNBlock_1", "PreLNBlock_2")
    _, seen = model.apply(variables, tokens, capture_intermediates=True)
    p = variables["params"]
    references = [
        _reference(
            lambda a, i=i: PreLNBlock(16).apply({"params": p[f"PreLNBlock_{i}"]}, a),
            seen["intermediates"][f"PreLNBlock_{i - 1}"]["__call__"][0],
        )
        for i in (1, 2)
    ]
    _check(found, references)
    # The first-to-last map is the composition of the two.
    both = lambda a: PreLNBlock(16).apply(
        {"params": p["PreLNBlock_2"]}, PreLNBlock(16).apply({"params": p["PreLNBlock_1"]}, a)
    )
    top, mean_sq = _reference(both, seen["intermediates"]["PreLNBlock_0"]["__call__"][0])
    np.testing.assert_allclose(found.io_sigma_max, top, rtol=0.02)
    np.testing.assert_allclose(found.io_mean_sq, mean_sq, rtol=0.05)


class NnxBlock(nnx.Module):
    def __init__(self, width, rngs):
        self.linear = nnx.Linear(width, width, rngs=rngs)
        self.norm = nnx.BatchNorm(width, rngs=rngs)

    def __call__(self, h):
        return h + jnp.tanh(self.norm(self.linear(h)))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.stem = nnx.Linear(5, 12, rngs=rngs)
        self.blocks = nnx.List([NnxBlock(12, rngs) for _ in range(3)])
        self.head = nnx.Linear(12, 2, rngs=rngs)

    def __call__(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


@pytest.mark.parametrize("train", [True, False])
def test_nnx_blocks_with_batchnorm_per_example_or_over_the_batch(train):
    model = NnxNet(nnx.Rngs(0))
    model.train() if train else model.eval()
    x = jax.random.normal(jax.random.key(1), (5, 5))
    found = gj.block_spectra(gj.boundary.wrap(model), x)
    # In train mode BatchNorm mixes the examples: one Jacobian over the whole batch.
    assert found.coupled is train
    assert found.sigma_max_examples.shape == (2, 1 if train else 5)
    outputs, h = [], model.stem(x)
    for block in model.blocks:
        h = block(h)
        outputs.append(h)
    # Each block as a pure function of its input (a fresh copy per trace, as NNX requires).
    pure = [nnx.split(model.blocks[i]) for i in (1, 2)]
    references = [
        _reference(
            lambda a, g=g, s=s: nnx.merge(g, jax.tree.map(jnp.asarray, s))(a),
            outputs[i],
            coupled=train,
        )
        for i, (g, s) in enumerate(pure)
    ]
    _check(found, references)


class ScannedLayer(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        return jnp.tanh(nn.Dense(12, kernel_init=nn.initializers.normal(0.5))(h)), None


class ScannedStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(12)(x)
        stack = nn.scan(
            ScannedLayer, variable_axes={"params": 0}, split_rngs={"params": True}, length=4
        )
        h, _ = stack()(h, None)
        return nn.Dense(1)(h)


def test_linen_scanned_layers_are_blocks_against_a_hand_loop():
    model = ScannedStack()
    x = jax.random.normal(jax.random.key(1), (3, 4))
    variables = model.init(jax.random.key(0), x)
    found = gj.block_spectra(gj.boundary.wrap(model, variables), x)
    assert found.names == tuple(f"ScanScannedLayer_0/{i}" for i in (1, 2, 3))
    p = variables["params"]
    kernel = p["ScanScannedLayer_0"]["Dense_0"]["kernel"]
    bias = p["ScanScannedLayer_0"]["Dense_0"]["bias"]
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    outputs = []
    for layer in range(4):
        h = jnp.tanh(h @ kernel[layer] + bias[layer])
        outputs.append(h)
    references = [
        _reference(lambda a, i=i: jnp.tanh(a @ kernel[i] + bias[i]), outputs[i - 1])
        for i in (1, 2, 3)
    ]
    _check(found, references)


def test_block_spectra_of_a_sweep_and_in_a_report():
    model = nn.Sequential([nn.Dense(16), nn.tanh, nn.Dense(16), nn.tanh, nn.Dense(16)])
    x = jax.random.normal(jax.random.key(1), (4, 8))
    variables = model.init(jax.random.key(0), x)
    net = gj.boundary.sweepable(model, variables, x)
    probe = gj.probes.block_spectra_probe(net, x)
    result = gj.sweep(net, probe, seeds=1, sigma_w=[0.5, 1.0], progress=False)
    # One network of the sweep is measured as block_spectra measures the model itself.
    alone = gj.block_spectra(net.boundary, x)
    one = probe.per_network(net.boundary.params, jax.random.key(0))
    np.testing.assert_allclose(one["block_sigma_max"], alone.sigma_max, rtol=1e-4)
    np.testing.assert_allclose(one["block_mean_sq"], alone.mean_sq, rtol=1e-4)
    # Halving every kernel shrinks each map's singular values (tanh' <= 1 near 0 grows).
    assert np.all(result["block_sigma_max"][0, 0] < result["block_sigma_max"][0, 1])
    data = result.to_xarray()
    assert list(data["block"].values) == ["layers_2", "layers_4"]
    assert float(data["sigma_b"]) == 0.0 and "net" in data.attrs
    np.testing.assert_array_equal(data["block_sigma_max"].values, result["block_sigma_max"])

    y = jnp.zeros((4, 16))
    report = gj.diagnose(model, variables, (x, y), "mse", spectra=True)
    assert [s.layer for s in report.spectra] == ["layers_2", "layers_4"]
    assert [s.method for s in report.spectra] == ["exact", "exact"]
    np.testing.assert_allclose([s.sigma_max for s in report.spectra], alone.sigma_max, rtol=1e-3)
    assert report.io_spectrum.source == "layers_0" and "block-to-block" in report.summary()
    frame = report.to_dataframe()
    assert list(frame["block"]) == list(report.series_names)
    np.testing.assert_array_equal(frame["grad_norm"], report.series_values)
    assert np.isnan(frame["sigma_max"][0]) and frame["sigma_max"][1] == report.spectra[0].sigma_max


def test_block_spectra_refusals():
    def fn(p, x, perturbations):
        return x @ p + perturbations["a"]

    x = jnp.ones((2, 3))
    with pytest.raises(GradjaxInputError, match="pure function"):
        gj.block_spectra(gj.boundary.wrap(fn, jnp.eye(3), perturbations={"a": x}), x)
    single = nn.Sequential([nn.Dense(3)])
    variables = single.init(jax.random.key(0), x)
    with pytest.raises(GradjaxInputError, match="at least two blocks"):
        gj.block_spectra(gj.boundary.wrap(single, variables), x)
    with pytest.raises(GradjaxInputError, match="spectra"):
        gj.diagnose(single, variables, (x, x), "mse", spectra=True, layers=[lambda a: a])
