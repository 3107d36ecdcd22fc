"""gradjax.utils.lapack: singular values by a direct LAPACK call, against float64 NumPy."""

import importlib.metadata
import os
import re
import sys
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest
from test_reliability_hang import run_until_stalled

from gradjax.utils import lapack, threads


def _reference(x: np.ndarray) -> np.ndarray:
    wide = np.complex128 if np.iscomplexobj(x) else np.float64
    return np.linalg.svd(np.asarray(x, wide), compute_uv=False)


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (1, 1), (4, 6, 2), (2, 3, 4, 4)])
def test_singular_values_match_float64_numpy(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = jax.jit(lapack.singular_values)(x)
    assert got.shape == (*shape[:-2], min(shape[-2:]))
    np.testing.assert_allclose(got, _reference(x), rtol=2e-5, atol=2e-6)


def test_float64_singular_values_agree_to_float64_precision(x64):
    x = np.random.default_rng(1).standard_normal((3, 7, 4))
    got = lapack.singular_values(jnp.asarray(x))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, _reference(x), rtol=1e-12)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_every_supported_jaxlib_has_the_kernel():
    # Fails, never skips: a jaxlib that pyproject admits must pass the direct call's check.
    low, high = lapack.SUPPORTED_JAXLIB
    declared = [r for r in importlib.metadata.requires("gradjax") if re.match(r"jaxlib\b", r)]
    assert declared == [f"jaxlib>={'.'.join(map(str, low))}"], declared
    installed = _version(jaxlib.__version__)
    assert installed >= low
    if high is None or installed < high:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the fallback's warning fails the test
            for dtype in (np.float32, np.float64):
                assert lapack._gesdd_target(np.dtype(dtype)) == (
                    f"lapack_{'s' if dtype == np.float32 else 'd'}gesdd_ffi"
                )


def test_the_direct_call_is_used_and_needs_no_copy_before_it():
    # The whole point of the direct call: no relayout copy ahead of the LAPACK kernel, so the
    # kernel is the program's first step (see the module docstring).
    hlo = jax.jit(lapack.singular_values).lower(jnp.ones((8, 6, 5))).compile().as_text()
    assert "gesdd" in hlo
    assert " copy(" not in hlo and "copy_fusion" not in hlo


def test_vmap_and_jvp_against_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 6, 4)).astype(np.float32)
    t = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(jax.vmap(lapack.singular_values)(x), _reference(x), rtol=2e-5)
    _, tangent = jax.jvp(lapack.singular_values, (x,), (t,))
    eps = 1e-4
    x64_, t64 = x.astype(np.float64), t.astype(np.float64)
    central = (_reference(x64_ + eps * t64) - _reference(x64_ - eps * t64)) / (2 * eps)
    np.testing.assert_allclose(tangent, central, rtol=1e-3, atol=1e-4)


def test_a_matrix_lapack_cannot_handle_gives_nan_only_for_itself():
    x = np.random.default_rng(3).standard_normal((3, 4, 4)).astype(np.float32)
    x[1, 2, 2] = np.nan
    got = np.asarray(lapack.singular_values(x))
    assert np.isnan(got[1]).any()
    np.testing.assert_allclose(got[[0, 2]], _reference(x[[0, 2]]), rtol=2e-5)


def test_complex_input_falls_back_to_jnp():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 3, 3)) + 1j * rng.standard_normal((2, 3, 3))).astype(np.complex64)
    np.testing.assert_allclose(lapack.singular_values(x), _reference(x), rtol=2e-5)


def test_after_returns_its_input_exactly_and_reads_its_dependencies():
    x = jnp.array([-0.0, 0.0, 1.5, -jnp.inf, jnp.nan])
    dep = jnp.array([jnp.nan, 2.0])
    out = jax.jit(lapack.after)(x, dep)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(x))
    np.testing.assert_array_equal(out, x)  # NaN == NaN for assert_array_equal
    hlo = jax.jit(lapack.after).lower(x, dep).compile().as_text()
    assert "multiply" in hlo  # the read of dep is not folded away


def test_off_the_cpu_nothing_of_the_module_runs(monkeypatch):
    # As on a GPU/TPU default backend: no check program, no warning, no ordering, no threads.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")

    def refuse(*args, **kwargs):
        raise AssertionError("CPU-only code ran off the CPU")

    monkeypatch.setattr(lapack, "_gesdd_target", refuse)
    monkeypatch.setattr(lapack, "_singular_values_differentiable", refuse)
    monkeypatch.setattr(threads, "_controller", refuse)
    x = jnp.array([1.0, -0.0])
    dep = jnp.array([jnp.nan])
    assert lapack.after(x, dep) is x
    a = np.random.default_rng(5).standard_normal((3, 4, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = lapack.singular_values(a)
        got_jit = jax.jit(lapack.singular_values)(a)
    np.testing.assert_allclose(got, _reference(a), rtol=2e-5)
    np.testing.assert_allclose(got_jit, _reference(a), rtol=2e-5)


def test_orthogonal_initialisation_does_not_deadlock(tmp_path):
    # Independent QRs of one program deadlocked XLA's two-thread pool (seen in gdb), and an
    # optimisation barrier did not prevent it; lapack.after orders them by data. Run in a
    # child process that prints a line per draw: a regression fails when the child stops
    # making progress (a hang), not when a busy machine makes it slow.
    script = tmp_path / "orthogonal_init.py"
    # The deadlock is in XLA's pool, whatever BLAS's threads: the program runs with OpenBLAS
    # single-threaded from the start, and as gradjax runs it in a default environment (its
    # thread rule, gradjax.utils.threads). Under that rule a default environment is also as fast.
    script.write_text(
        "import jax, gradjax as gj\n"
        "from gradjax import threads\n"
        "net = gj.build(gj.NetConfig(depth=300, width=96, init='orthogonal'))\n"
        "draw = jax.jit(jax.vmap(net.init_base))\n"
        "for i in range(8):\n"
        "    threads.run_batched(draw, jax.random.split(jax.random.key(i), 4))\n"
        "    print('draw', i, flush=True)\n"
        "print('done', flush=True)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as users run
    for blas_threads in ("1", None):  # OpenBLAS single-threaded, and its default
        if blas_threads is None:
            env.pop("OPENBLAS_NUM_THREADS", None)
        else:
            env["OPENBLAS_NUM_THREADS"] = blas_threads
        rc, out, err = run_until_stalled([sys.executable, str(script)], env=env, stall_s=180)
        assert rc == 0 and "done" in out and out.count("draw") == 8, err[-2000:]
