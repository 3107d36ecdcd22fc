"""The one activation table: a name -> function map read by models, theory and plots alike.

Any callable ``f(x) -> y`` that acts elementwise is accepted wherever a name is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradjax.errors import invalid

ActivationLike = str | Callable[[jax.Array], jax.Array]


class Activation(NamedTuple):
    """An elementwise nonlinearity with a display name."""

    name: str
    fn: Callable[[jax.Array], jax.Array]

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x)


def _linear(x: jax.Array) -> jax.Array:
    return x


def _gelu(x: jax.Array) -> jax.Array:
    # The exact (erf) form: its derivative is the one theory integrates.
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,  # negative slope 0.01
    "elu": jax.nn.elu,  # alpha 1
    "selu": jax.nn.selu,
    "gelu": _gelu,
    "swish": jax.nn.silu,
    "erf": jax.scipy.special.erf,
    "linear": _linear,
}


def activation_names() -> tuple[str, ...]:
    """Returns the names in the activation table."""
    return tuple(ACTIVATIONS)


def get_activation(activation: ActivationLike) -> Activation:
    """Looks up an activation by name, or wraps a user callable.

    Args:
      activation: a name from :data:`ACTIVATIONS` or an elementwise callable.

    Returns:
      The :class:`Activation`.

    Raises:
      GradjaxInputError: for an unknown name or a non-callable object.
    """
    if isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise invalid("activation", activation, "one of " + ", ".join(ACTIVATIONS))
        return Activation(activation, ACTIVATIONS[activation])
    if callable(activation):
        return Activation(getattr(activation, "__name__", "custom"), activation)
    raise invalid("activation", activation, "a name (" + ", ".join(ACTIVATIONS) + ") or a callable")


def derivative(activation: ActivationLike) -> Callable[[jax.Array], jax.Array]:
    """Returns phi'(x), elementwise, by forward-mode autodiff.

    Args:
      activation: a name or an elementwise callable.

    Returns:
      A function of an array of any shape returning phi' at every entry.
    """
    fn = get_activation(activation).fn

    def phi_prime(x: jax.Array) -> jax.Array:
        # A JVP with a tangent of ones gives the elementwise derivative of an elementwise map.
        return jax.jvp(fn, (x,), (jnp.ones_like(x),))[1]

    return phi_prime
