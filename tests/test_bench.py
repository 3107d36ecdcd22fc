"""``gradjax bench``: discovery, JSON records, unknown names, failing benchmarks.

The runner is exercised on a tiny benchmark package written into a temporary directory (the
real suite takes minutes); its records are checked against the JSON layout of
benchmarks/README.md and against the timings they contain.
"""

import importlib
import json
import textwrap

import jax
import jax.numpy as jnp
import pytest
import threadpoolctl

from gradjax.commands import bench
from gradjax.commands.cli import main

TINY = '''
"""A tiny benchmark: a jitted matmul vs the same matmul in NumPy."""
import jax
import jax.numpy as jnp
import numpy as np

from gradjax.benchmarks import harness

NAME = "{name}"


def run(quick: bool = False) -> dict:
    n = 16 if quick else 64
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda m: m @ m)
    ours = harness.time_fn(lambda: f(a), repeats=5)
    an = np.asarray(a)
    base = harness.time_fn(lambda: an @ an, repeats=5)
    err = float(np.max(np.abs(np.asarray(f(a)) - an @ an)))
    return harness.record(
        NAME,
        config={{"n": n}},
        timings={{"gradjax": ours, "numpy": base}},
        ratios={{"vs_numpy": base["median"] / ours["median"]}},
        accuracy={{"max_abs_err": err}},
        targets={{"vs_numpy": ">= 0", "max_abs_err": "<= 1e-3"}},
    )
'''

BROKEN = """
NAME = "broken"


def run(quick: bool = False) -> dict:
    raise RuntimeError("this benchmark always fails")
"""


@pytest.fixture
def suite(tmp_path, monkeypatch, request):
    """A package ``<unique>`` with bench_alpha, bench_beta and a helper module."""
    name = f"fakebench_{request.node.name.replace('[', '_').replace(']', '_')}"
    pkg = tmp_path / "src" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Fake benchmarks."""\n')
    (pkg / "bench_alpha.py").write_text(textwrap.dedent(TINY.format(name="alpha")))
    (pkg / "bench_beta.py").write_text(textwrap.dedent(TINY.format(name="beta")))
    (pkg / "helpers.py").write_text("X = 1\n")  # not a benchmark: never listed or imported
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    importlib.invalidate_caches()
    return name, pkg


def test_discovers_the_real_suite():
    found = bench.discover()
    assert {"sweep_spectra", "cost_curves"} <= set(found)
    assert found["cost_curves"] == "gradjax.benchmarks.bench_cost_curves"
    assert "harness" not in found


def test_runner_writes_valid_json_per_benchmark(suite, tmp_path, capsys, monkeypatch):
    package, _ = suite
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    out = tmp_path / "results"
    code = main(["bench", "--package", package, "--out", str(out), "--quick"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha.json", "beta.json"]
    for name in ("alpha", "beta"):
        record = json.loads((out / f"{name}.json").read_text())
        assert record["name"] == name
        assert record["config"] == {"n": 16}  # quick mode reached the benchmark
        assert record["quick"] is True and record["wall_s"] > 0
        machine = record["machine"]
        assert machine["jax_version"] == jax.__version__
        assert machine["devices"] == len(jax.devices())
        assert machine["backend"] == jax.default_backend()
        # The thread settings the run found, as OpenBLAS/threadpoolctl report them.
        found = machine["threads"]
        assert found["env"]["OMP_NUM_THREADS"] == "7"
        assert sorted(b["num_threads"] for b in found["blas"]) == sorted(
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        )
        for timing in record["timings_s"].values():
            assert timing["repeats"] == 5
            assert 0 < timing["min"] <= timing["median"] <= timing["max"]
        # The ratio is the one its own timings imply.
        t = record["timings_s"]
        assert record["ratios"]["vs_numpy"] == pytest.approx(
            t["numpy"]["median"] / t["gradjax"]["median"], rel=1e-12
        )
        assert record["targets_met"] == {"vs_numpy": True, "max_abs_err": True}
    table = capsys.readouterr().out
    assert "| alpha | vs_numpy |" in table and "| beta | vs_numpy |" in table
    assert "max_abs_err" in table


def test_named_benchmark_runs_alone(suite, tmp_path):
    package, _ = suite
    out = tmp_path / "results"
    assert main(["bench", "beta", "--package", package, "--out", str(out), "--quick"]) == 0
    assert [p.name for p in out.iterdir()] == ["beta.json"]


def test_unknown_name_lists_the_valid_names(suite, tmp_path, capsys):
    package, _ = suite
    out = tmp_path / "results"
    code = main(["bench", "alpha", "gamma", "--package", package, "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "gradjax bench: error: NAME='gamma' is invalid: expected one of the benchmarks: alpha, beta"
    ]
    assert not out.exists()  # refused before any work


def test_a_failing_benchmark_does_not_lose_the_others(suite, tmp_path, capsys):
    package, pkg = suite
    (pkg / "bench_broken.py").write_text(BROKEN)
    importlib.invalidate_caches()
    out = tmp_path / "results"
    code = main(["bench", "--package", package, "--out", str(out), "--quick"])
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["alpha.json", "beta.json"]
    captured = capsys.readouterr()
    assert "| broken | FAILED: RuntimeError: this benchmark always fails |" in captured.out
    assert "failed: broken" in captured.err


def test_mismatched_name_is_a_failure(suite, tmp_path):
    package, pkg = suite
    (pkg / "bench_gamma.py").write_text(textwrap.dedent(TINY.format(name="delta")))
    importlib.invalidate_caches()
    with pytest.raises(ValueError, match="NAME is 'delta', not 'gamma'"):
        bench.run_benchmark(f"{package}.bench_gamma", quick=True)


def test_bad_package_is_refused(capsys):
    assert main(["bench", "--package", "no_such_package_here"]) == 2
    assert "--package='no_such_package_here' is invalid" in capsys.readouterr().err


def test_monitor_overhead_cnn_convolution_is_a_3x3_same_convolution():
    from gradjax.benchmarks.bench_monitor_overhead import DigitsCNN

    model = DigitsCNN(depth=2, features=4)
    x = jax.random.uniform(jax.random.key(0), (3, 64))
    variables = model.init(jax.random.key(1), x)
    _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    got = state["intermediates"]["conv0"]["__call__"][0]
    layer = variables["params"]["conv0"]
    # The same kernel as XLA's convolution sees it: (3, 3, in, out), 'SAME' zero padding.
    want = jax.lax.conv_general_dilated(
        x.reshape(3, 8, 8, 1),
        layer["kernel"].reshape(3, 3, 1, 4),
        window_strides=(1, 1),
        padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    assert got.shape == (3, 8, 8, 4)
    assert jnp.allclose(got, want + layer["bias"], rtol=1e-5, atol=1e-6)
    # Every conv layer and the head is one module: nine for the default depth.
    params = jax.eval_shape(DigitsCNN().init, jax.random.key(1), x)["params"]
    assert sorted(params) == [*(f"conv{i}" for i in range(8)), "head"]


def test_monitor_overhead_measures_the_cnn_without_the_examples(tmp_path, monkeypatch):
    from gradjax.benchmarks import bench_monitor_overhead as mo

    # An installed package has no examples/ next to its benchmarks.
    monkeypatch.setattr(mo, "EXAMPLES", tmp_path / "examples")
    tiny = {"depth": 2, "width": 8, "batch": 4, "steps": 2, "cnn_depth": 2, "cnn_steps": 2}
    monkeypatch.setattr(mo, "_config", lambda quick: dict(tiny))
    record = mo.run(quick=True)
    for key in ("overhead_fraction", "overhead_fraction_cnn"):
        value = record["ratios"][key]
        assert isinstance(value, float) and value > -1.0  # a ratio of two positive times
        assert record["targets_met"][key] is not None
    # The monitor changes no update: both scans end on the same parameters.
    assert record["accuracy"] == {
        "max_abs_param_diff_monitored_vs_plain": 0.0,
        "max_abs_param_diff_monitored_vs_plain_cnn": 0.0,
    }
    # One group per module: depth + 1 of them in each model (the layers and the head).
    assert record["cnn_groups"] == 3 and record["mlp_groups"] == 3
    assert "examples/diagnose_cnn_digits.py" in record["diagnose_examples_missing"]
    assert not [k for k in record["timings_s"] if k.startswith("diagnose_")]


def test_reliability_bad_inputs_span_the_six_verbs():
    from gradjax.benchmarks import bench_reliability as rel

    cases = rel.bad_inputs()
    assert len(cases) >= 150
    assert {verb for verb, _ in cases} == {
        "sweep",
        "train",
        "diagnose",
        "theory",
        "bench",
        "figures",
    }
    assert len({(verb, tuple(args)) for verb, args in cases}) == len(cases)  # no repeats


def test_reliability_classifies_a_refusal_and_a_successful_command():
    from gradjax.benchmarks import bench_reliability as rel

    bad = rel.classify("theory", ["--sigma-b2=nan"], timeout_s=rel.CASE_TIMEOUT_S)
    assert bad == "refused_cleanly"
    # Exit status 0 (help printed) is not a refusal.
    good = rel.classify("theory", ["--help"], timeout_s=rel.CASE_TIMEOUT_S)
    assert good == "other"
