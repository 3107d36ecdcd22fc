"""Initialisers: variances, orthogonality and scheme factors against their definitions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj


def test_gaussian_base_has_variance_one_over_fan_in(getkey):
    w = gj.initializers.base_weight(getkey(), "gaussian", 400, 250)
    # 100k samples: the sample variance is within a few standard errors of 1/250.
    assert float(jnp.var(w)) == pytest.approx(1 / 250, rel=0.03)
    assert float(jnp.mean(w)) == pytest.approx(0.0, abs=5e-4)


def test_normal_base_is_unscaled(getkey):
    assert float(
        jnp.var(gj.initializers.base_weight(getkey(), "normal", 300, 300))
    ) == pytest.approx(1.0, rel=0.03)


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 96)])
def test_orthogonal_has_orthonormal_rows_or_columns(getkey, shape):
    q = gj.initializers.haar_orthogonal(getkey(), *shape)
    small = min(shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    np.testing.assert_allclose(gram, np.eye(small), atol=2e-5)


def test_orthogonal_is_haar_not_qr_biased(getkey):
    # Haar-distributed Q has E[Q_11] = 0; plain QR of a Gaussian gives a positive-biased
    # diagonal. Mean of Q_11 over many draws, with its standard error 1/sqrt(n*count).
    draws = jax.vmap(lambda k: gj.initializers.haar_orthogonal(k, 8, 8)[0, 0])(
        jax.random.split(getkey(), 4000)
    )
    assert abs(float(jnp.mean(draws))) < 4 * math.sqrt(1 / 8 / 4000)


@pytest.mark.parametrize(
    "kind, expected",
    [("gaussian", 1.0), ("lecun", 1.0), ("he", math.sqrt(2)), ("glorot", math.sqrt(2 * 30 / 80))],
)
def test_scheme_factors(kind, expected):
    assert gj.initializers.scheme_factor(kind, 30, 50) == pytest.approx(expected)


def test_init_weight_scales(getkey):
    w = gj.initializers.init_weight(getkey(), (512, 256), kind="he", sigma_w=1.0)
    assert float(jnp.var(w)) == pytest.approx(2 / 256, rel=0.03)


def test_bad_kind_is_named():
    with pytest.raises(gj.GradjaxInputError, match="init='xavier'"):
        gj.initializers.scheme_factor("xavier", 3, 3)
