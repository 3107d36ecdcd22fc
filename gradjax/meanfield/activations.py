"""The one activation table: a name -> function map read by models, theory and plots alike.

Any callable ``f(x) -> y`` that acts elementwise is accepted wherever a name is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.utils.errors import GradjaxInputError, first_line, invalid

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


_VALIDATED: set[Activation] = set()


def checked_activation(activation: ActivationLike) -> Activation:
    """The activation, checked once to be elementwise, finite and differentiable.

    Args:
      activation: a name from :data:`ACTIVATIONS` or an elementwise callable.

    Returns:
      The :class:`Activation`.

    Raises:
      GradjaxInputError: for a function that is not elementwise, finite, differentiable with
        a derivative that is somewhere non-zero.

    Example:
      >>> checked_activation("tanh").name
      'tanh'
    """
    if isinstance(activation, Activation) and activation in _VALIDATED:
        # Already checked: inner functions re-enter here while tracing (under vmap the
        # check itself could not run eagerly).
        return activation
    try:
        return _checked_cached(activation)
    except TypeError as err:  # an unhashable callable: check it without the cache
        if "unhashable" not in str(err):
            raise
        return _check_activation(activation)


@functools.lru_cache(maxsize=128)
def _checked_cached(activation: ActivationLike) -> Activation:
    act = _check_activation(activation)
    _VALIDATED.add(act)
    return act


def _check_activation(activation: ActivationLike) -> Activation:
    act = get_activation(activation)
    points = np.linspace(-3.0, 3.0, 13, dtype=np.float32)
    try:
        with jax.ensure_compile_time_eval():
            x = jnp.asarray(points)
            y = act.fn(x)
            dy = derivative(act)(x)
            y, dy = np.asarray(y), np.asarray(dy)
    except Exception as err:  # any failure to trace or differentiate is the user's function
        raise GradjaxInputError(
            f"activation={act.name!r} is invalid: expected an elementwise function that JAX "
            f"can differentiate (evaluating phi' failed with {type(err).__name__}: "
            f"{first_line(err)})"
        ) from None
    if y.shape != points.shape or dy.shape != points.shape:
        raise invalid(
            "activation",
            act.name,
            f"an elementwise function (shape {points.shape} in, {y.shape} out)",
        )
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(dy))):
        raise invalid("activation", act.name, "a function with finite values and derivative")
    if not np.any(dy != 0):
        raise invalid(
            "activation",
            act.name,
            "a function with a non-zero derivative (phi' is 0 everywhere on [-3, 3], e.g. a "
            "step or rounding function: no gradient can pass through it)",
        )
    return act
