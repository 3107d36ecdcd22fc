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
from hand_written import lstm_step

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
                c, h = lstm_step(cell, c, h, x_t)
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


# ---------------------------------------------------------------------------- scanned stacks

L, W = 12, 16


class ScanBlock(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(W, W, rngs=rngs)
        self.bn = nnx.BatchNorm(W, rngs=rngs)

    def __call__(self, x):
        return nnx.tanh(self.bn(self.linear(x)))


class ScanMLP(nnx.Module):
    """Flax's NNX "scan over layers" pattern: blocks made with nnx.vmap, applied with nnx.scan."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=L)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create_block(rngs):
            return ScanBlock(rngs)

        self.blocks = create_block(rngs)
        self.head = nnx.Linear(W, 1, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def forward(block, x):
            return block(x)

        return self.head(forward(self.blocks, x))


def test_nnx_scanned_stack_is_probed_layer_by_layer():
    model = ScanMLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (32, W))
    y = jax.random.normal(jax.random.key(2), (32, 1))

    # By hand: the same blocks, one at a time in a Python loop, e_l added to each output.
    graphdef, stacked = nnx.split(model.blocks)
    head = model.head

    def loss(e):
        a = x
        for layer in range(L):
            block = nnx.merge(graphdef, jax.tree.map(lambda v, i=layer: v[i], stacked))
            a = block(a) + e[layer]
        return jnp.mean((head(a) - y) ** 2)

    truth = _per_step(jax.grad(loss)(jnp.zeros((L, 32, W))))
    report = gj.diagnose(model, None, (x, y), lambda out, y: jnp.mean((out - y) ** 2))
    assert report.activation_names == tuple(f"blocks/{i}" for i in range(L))
    np.testing.assert_allclose(report.activation_grad_norms, truth, rtol=1e-4)
    assert report.axis_verdicts == {"depth": report.verdict}


def test_nnx_scanned_stack_in_a_sweep_probe_equals_the_hand_loop():
    model = ScanMLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (16, W))
    y = jax.random.normal(jax.random.key(2), (16, 1))
    graphdef, stacked = nnx.split(model.blocks)

    def loss(e):
        a = x
        for layer in range(L):
            a = nnx.merge(graphdef, jax.tree.map(lambda v, i=layer: v[i], stacked))(a) + e[layer]
        return 0.5 * jnp.mean(jnp.sum((model.head(a) - y) ** 2, axis=-1))

    truth = _per_step(jax.grad(loss)(jnp.zeros((L, 16, W))))
    net = gj.boundary.sweepable(model, None, x)
    assert net.cfg.blocks == L
    probe = gj.probes.block_gradient_probe(net, (x, y), "mse")
    measured = probe.per_network(net.boundary.params, jax.random.key(0))["block_grad_norms"]
    np.testing.assert_allclose(measured, truth, rtol=1e-4)
    result = gj.sweep(net, probe, seeds=2, sigma_w=[0.5, 2.0], progress=False)
    assert result["block_grad_norms"].shape == (2, 2, L)
    assert result.meta["labels"]["block_grad_norms"] == [f"blocks/{i}" for i in range(L)]


# ---------------------------------------------------------------------------- sweeps over time


def test_sweepable_scales_only_the_kernels_the_pattern_names():
    model = TanhRNN(1.0)
    variables = model.init(jax.random.key(0), X)
    net = gj.boundary.sweepable(model, variables, X, kernels="SimpleCell_0/h/")
    assert net.cfg.scaled == ("SimpleCell_0/h/kernel",)
    base = net.init_base(jax.random.key(3))
    scaled = net.scale(base, sigma_w=3.0, sigma_b=0.0)
    p, b = scaled["SimpleCell_0"], base["params"]["SimpleCell_0"]
    np.testing.assert_allclose(p["h"]["kernel"], 3.0 * b["h"]["kernel"], rtol=1e-6)
    np.testing.assert_array_equal(p["i"]["kernel"], b["i"]["kernel"])
    np.testing.assert_array_equal(scaled["Dense_0"]["kernel"], base["params"]["Dense_0"]["kernel"])
    with pytest.raises(gj.GradjaxInputError, match=r"kernels='nothing'.*SimpleCell_0/h/kernel"):
        gj.boundary.sweepable(model, variables, X, kernels="nothing")


def test_recurrent_sweep_finds_the_critical_scale_of_mean_field_theory(tmp_path, capsys):
    # A tanh RNN, width 128, orthogonal recurrent kernel scaled by s, inputs of variance v
    # through a LeCun-normal input kernel: a pre-activation gets variance v from the input
    # at every step, as a bias of variance v would. Mean-field theory: the critical s is
    # sqrt(critical_sigma_w2(tanh, sigma_b^2 = v)).
    import json

    from gradjax.commands.cli import main
    from gradjax.meanfield.theory import critical_sigma_w2

    (tmp_path / "rnn_zoo.py").write_text(
        "import jax, jax.numpy as jnp\n"
        "from flax import linen as nn\n"
        "class TanhRNN(nn.Module):\n"
        "    @nn.compact\n"
        "    def __call__(self, x):\n"
        "        cell = nn.SimpleCell(128, recurrent_kernel_init=nn.initializers.orthogonal())\n"
        "        return nn.Dense(1)(nn.RNN(cell)(x)[:, -1])\n"
        "def make():\n"
        "    print('building')  # a chatty factory: stdout must stay JSON\n"
        "    x = 0.3 * jax.random.normal(jax.random.key(1), (16, 40, 4))\n"
        "    model = TanhRNN()\n"
        "    return model, model.init(jax.random.key(0), x), (x, jnp.zeros((16, 1)))\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        argv = ["sweep", "--model", "rnn_zoo:make", "--kernels", "SimpleCell_0/h/"]
        argv += ["--sigma-w", "0.8:1.8:6", "--seeds", "2", "--out", str(tmp_path / "s")]
        assert main(argv) == 0
    finally:
        sys.path.remove(str(tmp_path))
    summary = json.loads(capsys.readouterr().out)
    theory = float(np.sqrt(critical_sigma_w2("tanh", 0.3**2)))
    assert summary["scaled_kernels"] == ["SimpleCell_0/h/kernel"]
    assert summary["critical_sigma_w"] == pytest.approx(theory, rel=0.05)
    assert "growth_per_block" not in summary  # RNN_0 then Dense_0 is no stack of blocks
    assert (tmp_path / "s" / "sweep.png").exists()


class MaskedRNN(nn.Module):
    """Sequences of different lengths: the lengths are a second input, as Flax's examples pass
    them (``seq_lengths``)."""

    @nn.compact
    def __call__(self, x, lengths):
        h = nn.RNN(nn.SimpleCell(H))(x, seq_lengths=lengths)
        return nn.Dense(2)(h[jnp.arange(x.shape[0]), lengths - 1])


def test_array_apply_kwargs_are_inputs_of_one_compiled_program():
    from gradjax.diagnosis.measurement import clear_caches, compiled_programs

    model = MaskedRNN()
    lengths = jnp.array([T, T - 5, T - 10, T])
    variables = model.init(jax.random.key(0), X, lengths)
    clear_caches()
    first = gj.diagnose(model, variables, (X, Y), "xent", apply_kwargs={"lengths": lengths})
    shorter = lengths - 3  # new values, same shape: no new program
    second = gj.diagnose(model, variables, (X, Y), "xent", apply_kwargs={"lengths": shorter})
    assert len(compiled_programs()) == 1
    expect = _xent(model.apply(variables, X, shorter), Y)
    assert second.loss == pytest.approx(float(expect), rel=1e-6)
    assert second.loss != first.loss


def test_step_jacobian_spectra_equal_jacrev_and_svd_of_each_step():
    # Truth: the hand-written tanh step's Jacobian per example by jax.jacrev, exact SVD.
    model = TanhRNN(1.5)
    variables = model.init(jax.random.key(0), X)
    cell = variables["params"]["SimpleCell_0"]

    def step(h, x_t):
        return jnp.tanh(x_t @ cell["i"]["kernel"] + cell["i"]["bias"] + h @ cell["h"]["kernel"])

    one = jax.jit(jax.vmap(jax.jacrev(lambda h, x: step(h[None], x[None])[0])))
    h, top, mean_sq = jnp.zeros((B, H)), [], []
    for t in range(T):
        s = np.linalg.svd(np.asarray(one(h, X[:, t]), np.float64), compute_uv=False)
        top.append(s.max())  # block-diagonal over the batch: the largest example's
        mean_sq.append(np.mean(s**2))
        h = step(h, X[:, t])
    report = gj.diagnose(model, variables, (X, Y), "xent", step_jacobians=True)
    axis = report.time_axis
    np.testing.assert_allclose(axis.step_sigma_max, top, rtol=0.02)
    # Hutchinson with 16 probes over a batch of 4 x 8: a few per cent per step.
    assert np.median(np.abs(axis.step_mean_sq / np.array(mean_sq) - 1)) < 0.1
    assert "step Jacobian" in report.summary()
