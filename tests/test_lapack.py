"""gradjax.lapack: singular values by a direct LAPACK call, against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradjax import lapack


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


def test_the_direct_call_is_used_and_needs_no_copy_before_it():
    # The whole point of the direct call: no relayout copy ahead of the LAPACK kernel, so the
    # kernel is the program's first step (see the module docstring).
    if lapack._gesdd_target(np.dtype(np.float32)) is None:
        pytest.skip("this jaxlib's gesdd kernel cannot be called directly (jnp fallback)")
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
