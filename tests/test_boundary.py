"""Tests for gradjax.boundary.core: block discovery, NNX train mode, the factory loader, sweeps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import gradjax as gj
from gradjax.boundary import Site, choose_blocks
from gradjax.commands.factory import load_factory
from gradjax.diagnosis.measurement import compiled_programs
from gradjax.utils.fitting import growth_per_layer

# ------------------------------------------------------------------ structure


def test_blocks_are_repeated_composite_modules_not_projections():
    # Three Transformer blocks (each holding submodules) beside the four projections of an
    # attention: the blocks win although the projections repeat more.
    sites = [Site("Dense_0", "Dense", None, True)]
    for i in range(3):
        sites.append(Site(f"Block_{i}", "Block", None, True))
        sites.append(Site(f"Block_{i}/attn", "Attention", None, True))
        sites += [Site(f"Block_{i}/attn/{p}", "DenseGeneral", None, True) for p in "qkvo"]
    sites.append(Site("Dense_1", "Dense", None, True))
    assert [b.name for b in choose_blocks(sites)] == ["Block_0", "Block_1", "Block_2"]
    # A scanned stack counts its layers; each layer is a block.
    sites = [Site("in", "Dense", None, True), Site("stack", "Layer", 5, True)]
    sites += [Site("stack/Dense_0", "Dense", 5, True), Site("out", "Dense", None, True)]
    assert [b.name for b in choose_blocks(sites)] == [f"stack/{i}" for i in range(5)]


class _BatchNormMLP(nnx.Module):
    def __init__(self, depth, rngs):
        self.inp = nnx.Linear(6, 16, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(16, 16, rngs=rngs) for _ in range(depth)])
        self.norms = nnx.List([nnx.BatchNorm(16, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        h = self.inp(x)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            h = jax.nn.relu(norm(layer(h)))
        return self.out(h)


def test_nnx_batchnorm_in_train_mode(getkey):
    # Formerly "Cannot mutate BatchStat from a different trace level": the boundary now runs
    # a copy of the model made inside the traced function.
    model = _BatchNormMLP(5, nnx.Rngs(0))
    model.train()
    x = jax.random.normal(getkey(), (16, 6))
    y = jax.random.normal(getkey(), (16, 1))
    report = gj.diagnose(model, None, (x, y), "mse")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(es):  # independent: the forward pass by hand, batch statistics of this batch
        m = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))
        h = m.inp(x)
        for layer, norm, e in zip(m.layers, m.norms, es, strict=True):
            h = jax.nn.relu(norm(layer(h) + e))
        return gj.mse_loss(m.out(h), y)

    g = jax.grad(loss)([jnp.zeros((16, 16))] * 5)
    expect = [float(jnp.linalg.norm(v)) for v in g]
    assert report.activation_names == tuple(f"layers/{i}" for i in range(5))
    np.testing.assert_allclose(report.activation_grad_norms, expect, rtol=2e-4)
    assert report.context["norm"] == "batch"
    # The model itself is untouched (its running statistics are those of its creation).
    np.testing.assert_array_equal(np.asarray(model.norms[0].mean[...]), np.zeros(16))


def test_second_call_reuses_the_compiled_program(getkey):
    model = _BatchNormMLP(3, nnx.Rngs(1))
    x = jax.random.normal(getkey(), (8, 6))
    y = jax.random.normal(getkey(), (8, 1))
    first = gj.diagnose(model, None, (x, y), "mse")
    before = {id(v) for v in compiled_programs()}
    second = gj.diagnose(model, None, (x, y + 1.0), "mse")
    after = {id(v) for v in compiled_programs()}
    assert before == after  # no new program for the same structure and shapes
    assert second.loss != first.loss  # yet the new data was measured


# ------------------------------------------------------------------ loading


@pytest.fixture
def factories(tmp_path, monkeypatch):
    pkg = tmp_path / "zoo_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "syntax.py").write_text("def make(:\n    pass\n")
    (pkg / "wrong.py").write_text("def make():\n    return 3\n")
    (pkg / "fine.py").write_text(
        "import jax.numpy as jnp\n"
        "def make():\n"
        "    apply = lambda p, x: jnp.tanh(x @ p['w']) @ p['v']\n"
        "    params = {'w': jnp.eye(3), 'v': jnp.ones((3, 1))}\n"
        "    return apply, params, (jnp.ones((4, 3)), jnp.zeros((4, 1)))\n"
    )
    (pkg / "exits.py").write_text("import sys\ndef make():\n    sys.exit(0)\n")
    (pkg / "options.py").write_text(
        "import jax, jax.numpy as jnp\n"
        "def make(extra='rngs'):\n"
        "    apply = lambda p, x: jnp.tanh(x @ p['w'])\n"
        "    batch = (jnp.ones((4, 3)), jnp.zeros((4, 3)))\n"
        "    return apply, {'w': jnp.eye(3)}, batch, {extra: {'dropout': jax.random.key(0)}}\n"
        "def bad():\n"
        "    return make('seed')\n"
    )
    (pkg / "chatty.py").write_text(
        "from zoo_pkg.options import make as inner\n"
        "def make():\n"
        "    print('hello from the factory')\n"
        "    return inner()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("zoo_pkg.missing:make", "an importable module"),
        ("zoo_pkg.syntax:make", "without syntax errors"),
        (
            "zoo_pkg.wrong:make",
            r"returning \(model, params or None, batch\[, options\]\), not a int",
        ),
        ("zoo_pkg.fine:absent", "a callable 'absent'"),
        ("zoo_pkg.exits:make", r"a factory that returns instead of exiting \(sys.exit\(0\)\)"),
        (
            "zoo_pkg.options:bad",
            r"options with keys among rngs, apply_kwargs, mutable \(got \['seed'\]\)",
        ),
        ("no-colon", "'package.module:factory'"),
    ],
)
def test_load_factory_refuses_with_one_line(factories, spec, message):
    with pytest.raises(gj.GradjaxInputError, match=message) as err:
        load_factory(spec)
    assert "\n" not in str(err.value)


def test_load_factory_returns_options_and_keeps_stdout_clean(factories, capsys):
    loaded = load_factory("zoo_pkg.chatty:make")
    assert set(loaded.options) == {"rngs"} and loaded.batch[0].shape == (4, 3)
    out, err = capsys.readouterr()
    assert out == "" and "hello from the factory" in err


def test_cli_model_flag(factories, tmp_path, capsys):
    from gradjax.commands.cli import main

    out = tmp_path / "o"
    assert main(["diagnose", "--model", "zoo_pkg.wrong:make", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model='zoo_pkg.wrong:make' is invalid" in err[0]
    assert not out.exists()
    assert main(["diagnose", "--model", "zoo_pkg.fine:make", "--out", str(out)]) == 0
    assert "inconclusive" in (out / "report.txt").read_text().lower()


# ------------------------------------------------------------------ sweeps


def test_sweep_finds_the_critical_init_of_a_scanned_tanh_stack():
    # The stack's own init is sigma_w^2 = 4; the sweep scales every kernel by s, so the
    # effective sigma_w^2 is 4 s^2. Mean-field theory (tanh, sigma_b = 0): chi_1 = sigma_w^2
    # at the fixed point q* = 0 for sigma_w^2 <= 1, so the critical scale is s = 0.5, and the
    # per-block growth of ||dL/da_l|| is sqrt(chi_1) = 2 s below it.
    from examples.scan_stack_linen import make

    model, variables, (x, y) = make(depth=12, width=64, batch=16)
    net = gj.boundary.sweepable(model, variables, x)
    probe = gj.probes.block_gradient_probe(net, (x, y), "mse")
    res = gj.sweep(net, probe, seeds=2, sigma_w=[0.25, 0.5, 1.0])
    norms = np.asarray(res.data["block_grad_norms"])
    growth = np.mean(growth_per_layer(norms, axis=-1), axis=0)
    assert growth[0] == pytest.approx(0.5, abs=0.06)
    assert growth[1] == pytest.approx(1.0, abs=0.06)
    assert growth[2] > 1.08
