"""gradjax.utils.threads: one BLAS thread while gradjax's batched factorisations run, and only then.

The thread count is read from inside the running XLA program (a host callback) through
OpenBLAS's own ``openblas_get_num_threads``, independently of threadpoolctl, which sets it.
"""

import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl

from gradjax.utils import lapack, threads


def _openblas_threads() -> list[int]:
    """``openblas_get_num_threads()`` of every OpenBLAS loaded in this process."""
    counts = []
    for info in threadpoolctl.threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        lib = ctypes.CDLL(info["filepath"])
        names = [
            f"{prefix}openblas_get_num_threads{suffix}"
            for prefix in ("", "scipy_")
            for suffix in ("", "64_")
        ]
        getter = next(getattr(lib, n) for n in names if hasattr(lib, n))
        counts.append(int(getter()))
    return counts


@pytest.fixture
def two_blas_threads():
    """Every BLAS library at two threads for the test, whatever the environment says."""
    lapack.singular_values(np.ones((2, 2, 2), np.float32))  # loads jaxlib's LAPACK
    if not _openblas_threads():
        pytest.fail("no OpenBLAS found: jaxlib's CPU LAPACK is expected to use SciPy's")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert _openblas_threads() and set(_openblas_threads()) == {2}
        yield


def _seen_from_inside(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The thread count at the moment the program runs, not when Python dispatched it.
    seen = jax.pure_callback(
        lambda _: np.int32(max(_openblas_threads())),
        jax.ShapeDtypeStruct((), jnp.int32),
        x,
    )
    return jnp.linalg.qr(x)[1], seen


def test_run_batched_holds_one_thread_while_the_program_runs(two_blas_threads):
    x = jax.random.normal(jax.random.key(0), (4, 8, 8))
    fn = jax.jit(_seen_from_inside)
    r, seen = threads.run_batched(fn, x)
    assert int(seen) == 1
    assert set(_openblas_threads()) == {2}  # restored afterwards
    np.testing.assert_allclose(np.abs(r), np.abs(np.linalg.qr(np.asarray(x))[1]), atol=1e-4)
    _, seen_outside = jax.block_until_ready(fn(x))
    assert int(seen_outside) == 2  # without the rule, the process's setting


def test_a_single_factorisation_keeps_the_process_setting(two_blas_threads):
    _, seen = threads.run_batched(jax.jit(_seen_from_inside), jnp.eye(8), batch=1)
    assert int(seen) == 2


def test_the_setting_comes_back_after_an_exception(two_blas_threads):
    with pytest.raises(RuntimeError), threads.batched_lapack():
        assert set(_openblas_threads()) == {1}
        raise RuntimeError("boom")
    assert set(_openblas_threads()) == {2}


def test_eager_singular_values_restore_the_setting(two_blas_threads):
    x = np.random.default_rng(0).standard_normal((6, 5, 4)).astype(np.float32)
    s = lapack.singular_values(x)
    np.testing.assert_allclose(s, np.linalg.svd(x.astype(np.float64), compute_uv=False), rtol=2e-5)
    assert set(_openblas_threads()) == {2}


def test_settings_report_the_environment_and_the_libraries(two_blas_threads, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    found = threads.settings()
    assert found["env"]["OMP_NUM_THREADS"] == "3"
    assert found["env"]["OPENBLAS_NUM_THREADS"] is None
    assert found["cpu_count"] == os.cpu_count()
    openblas = [b["num_threads"] for b in found["blas"] if b["internal_api"] == "openblas"]
    assert sorted(openblas) == sorted(_openblas_threads())
