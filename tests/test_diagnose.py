"""Tests for gradjax.diagnose: exact agreement, known verdicts, Linen/NNX models, bad input."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import gradjax as gj
from gradjax.diagnosis.advice import critical_sigma_w2
from gradjax.diagnosis.report import Thresholds
from gradjax.diagnosis.verdicts import classify, regions
from gradjax.utils.fitting import growth_rate

WIDTH = 32
DEPTH = 16
_CACHE: dict = {}


def _data(key, batch=32, dim=WIDTH, out=1):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (batch, dim)), jax.random.normal(ky, (batch, out))


def _net_report(*, activation, sigma_w, init="gaussian", depth=DEPTH, width=WIDTH, seed=0, **kw):
    """A diagnosed gradjax MLP; shared between tests (each diagnose call compiles once)."""
    key = (activation, sigma_w, init, depth, width, seed, repr(sorted(kw.items(), key=str)))
    if key not in _CACHE:
        net = gj.build(
            gj.NetConfig(
                depth=depth, width=width, activation=activation, sigma_w=sigma_w, init=init
            )
        )
        params = net.init(jax.random.key(seed))
        x, y = _data(jax.random.key(seed + 100), dim=width)
        kw.setdefault("jacobians", False)
        _CACHE[key] = (net, params, x, y, gj.diagnose_net(net, params, x, y, **kw))
    return _CACHE[key]


# ------------------------------------------------------------------ exact agreement


def test_gradjax_mlp_agrees_exactly_with_per_layer_diagnostics(getkey, x64):
    # Independent source: gradjax.layer_gradient_norms (one backward pass through the
    # scanned net) and gradjax.layer_jacobians + spectrum_summary, in float64.
    net = gj.build(
        gj.NetConfig(
            depth=6, width=16, activation="tanh", sigma_w=1.3, sigma_b=0.1, dtype="float64"
        )
    )
    params = net.init(getkey())
    x = jax.random.normal(getkey(), (8, 16), jnp.float64)
    y = jax.random.normal(getkey(), (8, 1), jnp.float64)
    report = gj.diagnose_net(net, params, x, y)
    ref = gj.layer_gradient_norms(net, params, x, y)
    assert report.series == "activations"
    assert report.series_names == tuple(f"block{i}" for i in range(1, 7))
    np.testing.assert_allclose(report.series_values, np.asarray(ref.activations), rtol=1e-12)
    leaf = dict(zip(report.leaf_names, report.leaf_grad_norms, strict=True))
    weights = [leaf["input/W"]] + [leaf[f"hidden/{i}/W"] for i in range(5)]
    biases = [leaf["input/b"]] + [leaf[f"hidden/{i}/b"] for i in range(5)]
    np.testing.assert_allclose(weights, np.asarray(ref.weights), rtol=1e-12)
    np.testing.assert_allclose(biases, np.asarray(ref.biases), rtol=1e-12)
    np.testing.assert_allclose(leaf["readout/W"], float(ref.readout), rtol=1e-12)
    np.testing.assert_allclose(report.loss, float(ref.loss), rtol=1e-12)
    # Groups in execution order, each the root-sum-square of its leaves.
    assert report.groups == ("input", *[f"hidden/{i}" for i in range(5)], "readout")
    np.testing.assert_allclose(
        report.group_grad_norms[1:6], np.hypot(ref.weights[1:], ref.biases[1:]), rtol=1e-12
    )
    jac = gj.layer_jacobians(net, params, x[0])
    mean_sq = np.asarray(gj.spectrum_summary(jac.all_layers()).mean_sq)
    np.testing.assert_allclose([s.mean_sq for s in report.spectra], mean_sq, rtol=1e-10)


# ------------------------------------------------------------------ known verdicts


@pytest.mark.parametrize(
    ("activation", "sigma_w", "init", "expected"),
    [
        ("sigmoid", 1.0, "gaussian", "vanishing"),  # chi_1 <= sigma_w^2/16: vanishing
        ("relu", 2.0, "gaussian", "exploding"),  # sigma_w^2 = 4: chi_1 = 2
        ("tanh", 1.0, "gaussian", "healthy"),  # critical at sigma_b = 0: chi_1 = 1
        ("relu", 1.0, "he", "healthy"),  # He: sigma_w^2 = 2, chi_1 = 1
    ],
)
def test_known_configurations_get_their_verdict(activation, sigma_w, init, expected):
    *_, report = _net_report(activation=activation, sigma_w=sigma_w, init=init)
    assert report.verdict == expected, report.summary()
    assert report.regions[0].verdict == expected  # the input region is the one at risk


def test_relu_growth_matches_mean_field():
    # Mean field (Schoenholz et al. 2017): ||dL/da_l|| grows by sqrt(chi_1) per layer towards
    # the input; for ReLU chi_1 = sigma_w^2 / 2 = 2, so the factor is sqrt(2). At width 32 the
    # least-squares fit over 16 layers scatters by about +-0.05 across seeds (finite-width
    # O(1/sqrt(width)) noise per layer); 0.1 is twice that.
    *_, report = _net_report(activation="relu", sigma_w=2.0)
    assert abs(report.growth_per_layer - math.sqrt(2.0)) < 0.1


def test_suggestions_are_concrete_for_exploding_relu():
    *_, report = _net_report(activation="relu", sigma_w=2.0)
    text = "\n".join(report.suggestions)
    # One weight-scale target, He's sigma_w^2 = 2 (chi_1 = sigma_w^2 / 2 = 1), beside today's 4.
    assert "sigma_w^2 = 2 (now sigma_w^2 = 4)" in text
    assert "multiply the weight init scale" not in text
    # No learning rate, no history: nothing measured says a warm-up would help.
    assert "warm-up" not in text
    # Exploded norms give no clip threshold (clipping at a quantile of them would be absurd).
    assert math.isnan(report.clip_threshold) and "clip_by_global_norm(" not in text


def test_suggestions_for_vanishing_sigmoid_name_the_critical_init():
    *_, report = _net_report(activation="sigmoid", sigma_w=1.0)
    crit = critical_sigma_w2("sigmoid", 0.0)
    assert crit is not None
    assert any(f"sigma_w^2 = {crit:.3g}" in s for s in report.suggestions)
    assert any("switch sigmoid" in s for s in report.suggestions)


def test_clip_threshold_is_a_multiple_of_the_independent_full_batch_norm():
    net, params, x, y, report = _net_report(activation="tanh", sigma_w=1.0)

    # Independent: jax.grad on net.apply, a root-sum-square over every leaf in float64.
    def loss(p, xb, yb):
        return gj.mse_loss(net.apply(p, xb), yb)

    grad = jax.jit(jax.grad(loss))
    g = grad(params, x, y)
    full = math.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in jax.tree.leaves(g)))
    assert report.global_norm == pytest.approx(full, rel=2e-5)
    assert report.clip_threshold == pytest.approx(1.5 * full, rel=2e-5)
    assert "full-batch global gradient norm" in report.clip_basis
    assert report.microbatch_global_norms.size == 0  # slices only when asked for
    # Asked for, the slices are each slice's own gradient (a mean loss couples no examples).
    *_, sliced = _net_report(activation="tanh", sigma_w=1.0, microbatches=8)
    expect = []
    for i in range(8):
        gi = grad(params, x[i * 4 : (i + 1) * 4], y[i * 4 : (i + 1) * 4])
        expect.append(math.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(gi))))
    np.testing.assert_allclose(sliced.microbatch_global_norms, expect, rtol=2e-5)
    assert sliced.clip_threshold == report.clip_threshold  # never read from the slices


def test_clip_threshold_from_a_history_stops_at_the_first_explosion():
    history = np.array([2.0, 3.0, 2.5, 3.5, 2.0, 500.0, 1e4, np.inf])
    *_, report = _net_report(activation="tanh", sigma_w=1.0, depth=4, norm_history=history)
    assert report.clip_threshold == pytest.approx(np.percentile(history[:5], 90))
    assert "up to the explosion at step 5" in report.clip_basis


def test_norm_history_drives_clip_and_warmup_advice(getkey):
    history = np.array([50.0, 40.0] + [1.0] * 18)
    *_, report = _net_report(activation="tanh", sigma_w=1.0, depth=4, norm_history=history)
    assert report.clip_threshold == pytest.approx(np.percentile(history, 90))
    assert any("warm-up over the first 2 steps" in s for s in report.suggestions)


# ------------------------------------------------------------------ thresholds and rates


def test_growth_rate_recovers_a_geometric_series():
    values = 3.0 * 0.7 ** np.arange(10)[::-1]  # input side first: 0.7 per layer towards input
    assert growth_rate(values) == pytest.approx(0.7, rel=1e-12)
    assert math.isnan(growth_rate(np.array([1.0])))


def test_region_verdicts_follow_stated_thresholds():
    t = Thresholds(vanishing=0.1, exploding=10.0)
    assert classify(0.099, t) == "vanishing"
    assert classify(0.1, t) == "healthy"
    assert classify(10.0, t) == "healthy"
    assert classify(10.01, t) == "exploding"
    assert classify(math.nan, t) == "non-finite"
    regs = regions([str(i) for i in range(9)], 2.0 ** np.arange(9), t)
    # Regions are thirds; ratios are geometric means over the output-most value 2^8.
    np.testing.assert_allclose([r.ratio for r in regs], [2.0**-7, 2.0**-4, 2.0**-1])
    assert [r.verdict for r in regs] == ["vanishing", "vanishing", "healthy"]
    with pytest.raises(gj.GradjaxInputError, match="vanishing < 1 < exploding"):
        Thresholds(vanishing=2.0)


def test_critical_sigma_w2_uses_mean_field_theory():
    # Closed forms: ReLU chi_1 = sigma_w^2 / 2 (He, 2); tanh at sigma_b = 0 has q* = 0 and
    # chi_1 = sigma_w^2 tanh'(0)^2 (so 1).
    assert critical_sigma_w2("relu", 0.0) == pytest.approx(2.0, abs=0.01)
    assert critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=0.01)


# ------------------------------------------------------------------ Flax models


class _LinenBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(self.features)(x)
        h = nn.Dense(self.features, name="inner")(jnp.tanh(h))
        return self.perturb("out", jax.nn.sigmoid(h))


class _LinenNet(nn.Module):
    depth: int

    @nn.compact
    def __call__(self, x):
        # Names that sort against execution order: the tracer, not the names, decides order.
        x = nn.Dense(16, name="zz_embed")(x)
        for i in range(self.depth):
            x = _LinenBlock(16, name=f"block_{i}")(x)
        return nn.Dense(1, name="aa_head")(x)


def test_linen_nested_modules(getkey):
    x, y = _data(getkey(), batch=16, dim=8)
    model = _LinenNet(depth=11)
    variables = model.init(getkey(), x)
    report = gj.diagnose(model.apply, variables, (x, y), "mse", hints={"activation": "sigmoid"})
    assert report.kind == "linen"
    # The blocks are the repeated submodules, found without reading the perturb calls.
    assert report.activation_names == tuple(f"block_{i}" for i in range(11))
    assert report.groups[0] == "zz_embed" and report.groups[-1] == "aa_head"
    assert report.groups[1:3] == ("block_0/Dense_0", "block_0/inner")

    # Independent: dL/d(perturbations) by jax.grad on the Linen variables directly.
    def loss(pert):
        out = model.apply({"params": variables["params"], "perturbations": pert}, x)
        return gj.mse_loss(out, y)

    zeros = jax.tree.map(jnp.zeros_like, variables["perturbations"])
    g = jax.grad(loss)(zeros)
    expect = [float(jnp.linalg.norm(g[f"block_{i}"]["out"])) for i in range(11)]
    np.testing.assert_allclose(report.activation_grad_norms, expect, rtol=1e-5)
    gp = jax.grad(lambda p: gj.mse_loss(model.apply({"params": p}, x), y))(variables["params"])
    inner = gp["block_3"]["inner"]
    np.testing.assert_allclose(
        report.group_grad_norms[report.groups.index("block_3/inner")],
        float(jnp.sqrt(jnp.sum(inner["kernel"] ** 2) + jnp.sum(inner["bias"] ** 2))),
        rtol=1e-5,
    )
    assert report.verdict == "vanishing"  # two saturating maps per block, default init
    json.dumps(report.to_dict())


class _NNXBlock(nnx.Module):
    def __init__(self, n, rngs):
        self.lin = nnx.Linear(n, n, rngs=rngs)
        self.norm = nnx.LayerNorm(n, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.norm(self.lin(x)))


class _NNXNet(nnx.Module):
    def __init__(self, depth, rngs):
        self.embed = nnx.Linear(8, 16, rngs=rngs)
        self.blocks = nnx.List([_NNXBlock(16, rngs) for _ in range(depth)])
        self.head = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_nnx_nested_modules(getkey):
    x, y = _data(getkey(), batch=16, dim=8)
    model = _NNXNet(12, nnx.Rngs(0))
    report = gj.diagnose(model, None, (x, y), "mse")
    assert report.kind == "nnx"
    assert report.activation_names == tuple(f"blocks/{i}" for i in range(12))
    assert report.groups[:3] == ("embed", "blocks/0/lin", "blocks/0/norm")

    # Independent: the forward pass written out by hand, a zero added after each block.
    def loss(es):
        h = model.embed(x)
        for block, e in zip(model.blocks, es, strict=True):
            h = block(h) + e
        return gj.mse_loss(model.head(h), y)

    g = jax.grad(loss)([jnp.zeros((16, 16))] * 12)
    expect = [float(jnp.linalg.norm(v)) for v in g]
    np.testing.assert_allclose(report.activation_grad_norms, expect, rtol=1e-5)
    # LayerNorm + ReLU keeps the gradient flowing: healthy; LayerNorm found, no skips.
    assert report.verdict == "healthy", report.summary()
    assert report.context["norm"] == "layer" and report.context["residual"] is False


def test_pure_function_without_activations_is_inconclusive(getkey):
    # Without block outputs only ||dL/dW_l|| = ||delta_l a_{l-1}^T|| exists.
    keys = jax.random.split(getkey(), 8)
    params = [jax.random.normal(k, (32, 32)) / math.sqrt(32) for k in keys]

    def apply(p, x):
        for w in p:
            x = jax.nn.sigmoid(x @ w)
        return x

    x, _ = _data(getkey(), batch=16, dim=32)
    report = gj.diagnose(apply, params, (x, jnp.zeros((16, 32))), "mse")
    assert report.kind == "function" and report.series == "parameters"
    assert report.series_names == tuple(str(i) for i in range(8))
    np.testing.assert_allclose(report.series_values, report.group_weight_grad_norms)
    # Parameter norms are no gradient-flow measurement: no verdict, and the report says so.
    assert report.verdict == "inconclusive" and not report.regions
    assert "not a gradient-flow measurement" in report.summary()
    assert any("perturbations=" in s for s in report.suggestions)
    assert not report.spectra


def test_non_finite_gradients_are_data_not_a_crash(getkey):
    params = {"w": jnp.full((4, 4), 30.0)}
    apply = lambda p, x: jnp.exp(jnp.exp(x @ p["w"]))  # overflows to inf
    report = gj.diagnose(apply, params, (jnp.ones((4, 4)), jnp.zeros((4, 4))), "mse")
    assert report.verdict == "non-finite"
    assert math.isnan(report.clip_threshold)
    assert any("themselves the explosion" in s for s in report.suggestions)
    assert not any("warm-up" in s for s in report.suggestions)  # no evidence for one


def test_report_views():
    *_, report = _net_report(activation="tanh", sigma_w=1.0)
    text = report.summary()
    assert "verdict: HEALTHY" in text and "thresholds: vanishing if" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["verdict"] == "healthy" and len(data["series"]["values"]) == DEPTH
    fig = report.plot()
    assert len(fig.axes) == 3
    assert fig.axes[0].get_yscale() == "log"


# ------------------------------------------------------------------ bad input


def test_bad_inputs_raise_clear_errors(getkey):
    x, y = _data(getkey(), batch=8, dim=8)
    model = _LinenNet(depth=2)
    variables = model.init(getkey(), x)
    with pytest.raises(gj.GradjaxInputError, match=r"loss_fn output shape=\(8, 1\).*scalar"):
        gj.diagnose(model.apply, variables, (x, y), lambda o, t: (o - t) ** 2)
    with pytest.raises(gj.GradjaxInputError, match=r"batch inputs shape=\(8, 5\).*accepts"):
        gj.diagnose(model.apply, variables, (jnp.ones((8, 5)), y), "mse")
    with pytest.raises(gj.GradjaxInputError, match=r"batch targets shape"):
        gj.diagnose(model.apply, variables, (x, jnp.ones((3, 2))), "mse")
    bad = jax.tree.map(lambda a: a, variables)
    bad["params"]["block_1"]["inner"]["kernel"] = (
        bad["params"]["block_1"]["inner"]["kernel"].at[0, 0].set(jnp.nan)
    )
    with pytest.raises(gj.GradjaxInputError, match=r"non-finite values in params/block_1/inner"):
        gj.diagnose(model.apply, bad, (x, y), "mse")
    with pytest.raises(gj.GradjaxInputError, match="batch"):
        gj.diagnose(model.apply, variables, x, "mse")
    with pytest.raises(gj.GradjaxInputError, match="loss"):
        gj.diagnose(model.apply, variables, (x, y), "hinge")


def test_first_step_probe_matches_closed_form():
    # L(w) = 0.5 sum(w^2) with w = 1 (4 entries): L0 = 2; Adam's first step w - lr sign(w)
    # gives L = 2 (1 - lr)^2. At lr = 4, 2, 1, 0.5, 0.25: 18, 2, 0, 0.5, 1.125. The best gain
    # is 2 (lr = 1); lr = 4 is unstable and the largest rate with gain >= 1 is 1.
    params = {"w": jnp.ones(4)}
    apply = lambda p, x: jnp.broadcast_to(p["w"], x.shape)
    report = gj.diagnose(
        apply, params, (jnp.ones((4, 4)), jnp.zeros((4, 4))), "mse", lr=4.0, probe_halvings=4
    )
    probe = report.step_probe
    np.testing.assert_allclose(probe.losses, [18.0, 2.0, 0.0, 0.5, 1.125], atol=1e-6)
    assert probe.loss0 == pytest.approx(2.0)
    assert probe.unstable and probe.safe_lr == pytest.approx(1.0)
    assert "warm-up" in report.suggestions[0]


def test_cli_writes_report_and_rejects_bad_input(tmp_path, capsys):
    from gradjax.commands.cli import main

    out = tmp_path / "diag"
    code = main(
        [
            "diagnose",
            "--activation",
            "sigmoid",
            "--depth",
            "8",
            "--width",
            "16",
            "--batch",
            "16",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    data = json.loads((out / "report.json").read_text())
    assert data["verdict"] == "vanishing"  # sigmoid, sigma_w = 1: chi_1 <= 1/16
    assert (out / "report.png").stat().st_size > 0
    assert "verdict: VANISHING" in (out / "report.txt").read_text()
    assert main(["diagnose", "--sigma-w", "-1", "--out", str(out)]) == 2
    assert "--sigma-w='-1' is invalid" in capsys.readouterr().err


def test_compare_reports_block_by_block():
    *_, before = _net_report(activation="sigmoid", sigma_w=1.0)
    *_, after = _net_report(activation="tanh", sigma_w=1.0)
    diff = before.compare(after)
    assert diff.verdicts == ("vanishing", "healthy")
    assert diff.common_layers == before.series_names
    # Independent: the ratio of the two reports' series, entry by entry.
    np.testing.assert_allclose(diff.ratios, after.series_values / before.series_values)
    assert "verdict: vanishing -> healthy" in diff.summary()
    json.dumps(diff.to_dict())


def test_activation_functions_are_named_never_printed():
    from gradjax.diagnosis.advice import activation_name

    assert activation_name(jax.nn.gelu) == "gelu" and activation_name("tanh") == "tanh"
    assert activation_name(lambda v: v * jax.nn.sigmoid(1.702 * v)) is None
    *_, report = _net_report(activation="sigmoid", sigma_w=1.0)
    assert not any("<function" in s for s in report.suggestions)


def test_leaf_and_group_norms_match_numpy():
    from gradjax.diagnosis.measurement import combine_norms, leaf_norms
    from gradjax.utils.tree_paths import layer_slices

    rng = np.random.default_rng(0)
    kernel, bias = rng.standard_normal((3, 4, 5)), rng.standard_normal(7)
    tree = {"bias": bias, "stack": {"kernel": kernel}}
    slices = layer_slices(tree, stacked=[("stack",)])
    assert [s.layer for s in slices] == [None, 0, 1, 2]  # the stack is split per layer
    expected = [np.linalg.norm(bias)] + [np.linalg.norm(kernel[i]) for i in range(3)]
    norms = leaf_norms(tree, slices)
    np.testing.assert_allclose(norms, expected, rtol=1e-12)
    everything = math.sqrt(np.sum(kernel**2) + np.sum(bias**2))
    groups = combine_norms(norms, [[0, 1, 2, 3], [1]])
    np.testing.assert_allclose(groups, [everything, expected[1]], rtol=1e-12)
