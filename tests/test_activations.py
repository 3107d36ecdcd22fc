"""The activation table and derivatives, against closed forms (claim C3)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj

# Closed-form derivatives, written out independently of autodiff.
CLOSED_FORM_DERIVATIVES = {
    "sigmoid": lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2,
    "tanh": lambda x: 1 / np.cosh(x) ** 2,
    "relu": lambda x: (x > 0).astype(float),
    "linear": lambda x: np.ones_like(x),
    "elu": lambda x: np.where(x > 0, 1.0, np.exp(x)),
    "erf": lambda x: 2 / np.sqrt(np.pi) * np.exp(-(x**2)),
    "swish": lambda x: 1 / (1 + np.exp(-x)) + x * np.exp(-x) / (1 + np.exp(-x)) ** 2,
}


@pytest.mark.parametrize("name", sorted(CLOSED_FORM_DERIVATIVES))
def test_derivative_matches_closed_form(name):
    x = np.linspace(-4, 4, 81) + 0.013  # avoid the kink of relu at 0
    got = gj.activations.derivative(name)(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, CLOSED_FORM_DERIVATIVES[name](x), rtol=2e-5, atol=2e-6)


def test_derivative_maxima_of_the_article():
    # The article: sigmoid' <= 0.25 and tanh' <= 1, both attained at 0.
    x = jnp.linspace(-6.0, 6.0, 12001)
    assert float(jnp.max(gj.activations.derivative("sigmoid")(x))) == pytest.approx(0.25, abs=1e-7)
    assert float(jnp.max(gj.activations.derivative("tanh")(x))) == pytest.approx(1.0, abs=1e-7)


def test_article_tanh_formula_has_a_typo():
    # The article writes tanh(x) = (e^x - e^-x)/(e^x - e^-x), which is identically 1;
    # the correct denominator is e^x + e^-x.
    x = np.linspace(-2, 2, 9)
    typo = (np.exp(x) - np.exp(-x)) / (np.exp(x) - np.exp(-x) + 1e-300)
    fixed = (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x))
    np.testing.assert_allclose(fixed, gj.activations.ACTIVATIONS["tanh"](jnp.asarray(x)), rtol=1e-6)
    assert not np.allclose(typo[x != 0], fixed[x != 0])


def test_every_table_entry_is_elementwise_and_jittable():
    x = jnp.linspace(-3.0, 3.0, 7)
    for name in gj.activation_names():
        y = jax.jit(gj.get_activation(name).fn)(x)
        assert y.shape == x.shape
        # Elementwise: the value at one point does not depend on the others.
        np.testing.assert_allclose(y[3], gj.get_activation(name).fn(x[3:4])[0], rtol=1e-6)


def test_user_callable_is_accepted():
    act = gj.get_activation(jnp.sin)
    assert act.name == "sin"
    np.testing.assert_allclose(
        gj.activations.derivative(jnp.sin)(jnp.array([0.3])), np.cos(0.3), rtol=1e-6
    )


@pytest.mark.parametrize("bad", ["foo", 3, None])
def test_unknown_activation_names_the_choices(bad):
    with pytest.raises(gj.GradjaxInputError, match="activation=.*expected.*tanh"):
        gj.get_activation(bad)
