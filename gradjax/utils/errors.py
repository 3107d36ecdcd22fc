"""Errors raised on bad input: one line naming the field, the value and what is allowed."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


class GradjaxInputError(ValueError):
    """Bad input to a gradjax function, config or command.

    The message always names the offending field, the value it got, and what is allowed,
    so the command line can print it as a single line and exit with status 2.
    """


def invalid(field: str, value: Any, allowed: str) -> GradjaxInputError:
    """Builds the standard error for ``field=value`` with a description of what is allowed.

    The value is shown on one line (an array's repr is joined) and cut at 200 characters, so
    the message stays a single readable line.
    """
    shown = " ".join(repr(value).split())
    if len(shown) > 200:
        shown = shown[:197] + "..."
    return GradjaxInputError(f"{field}={shown} is invalid: expected {allowed}")


def check_choice(field: str, value: Any, choices: Iterable[str]) -> None:
    """Raises unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise invalid(field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_int(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None):
    """Raises unless ``value`` is an integer (not a bool) in ``[minimum, maximum]``.

    Python and NumPy integers are accepted (``np.int64(8)`` as well as ``8``), and so are
    0-d integer arrays; booleans and floats are not, even when integral.
    """
    bounds = _bounds_text(minimum, maximum)
    value = as_int(field, value, f"an integer{bounds}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise invalid(field, value, f"an integer{bounds}")


def check_real(
    field: str,
    value: Any,
    *,
    minimum: float | None = None,
    strictly_positive: bool = False,
) -> None:
    """Raises unless ``value`` is a finite real number (``>= minimum``, ``> 0`` if asked)."""
    what = "a finite number"
    if strictly_positive:
        what += " > 0"
    elif minimum is not None:
        what += f" >= {minimum:g}"
    if isinstance(value, (bool, np.bool_, str, bytes)) or getattr(value, "shape", ()) != ():
        raise invalid(field, value, what)
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # NumPy and JAX scalars
        except (TypeError, ValueError):
            raise invalid(field, value, what) from None
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise invalid(field, value, what)
    if strictly_positive and value <= 0:
        raise invalid(field, value, what)
    if minimum is not None and value < minimum:
        raise invalid(field, value, what)


def as_int(field: str, value: Any, allowed: str = "an integer") -> int:
    """``value`` as a Python int if it is a Python/NumPy integer (not a bool), else raises.

    Args:
      field: the argument's name, for the error message.
      value: the value to convert.
      allowed: what the error message says is allowed.

    Returns:
      The integer.
    """
    if isinstance(value, (bool, np.bool_)):
        raise invalid(field, value, allowed)
    if isinstance(value, numbers.Integral):
        return int(value)
    if getattr(value, "shape", None) == () and np.issubdtype(
        getattr(value, "dtype", np.float64), np.integer
    ):
        try:
            return int(value)  # a 0-d NumPy or JAX integer array
        except Exception:  # a traced value has no concrete integer
            raise invalid(field, value, allowed) from None
    raise invalid(field, value, allowed)


def check_key(field: str, key: Any, *, allow_seed: bool = True) -> None:
    """Raises unless ``key`` is a JAX PRNG key or (if allowed) an integer seed in ``[0, 2**64)``.

    A typed key (``jax.random.key``) or a raw ``uint32`` key array (``jax.random.PRNGKey``)
    is accepted as it is, traced or not; an integer seed must fit the unsigned 64-bit seed
    of ``jax.random.key``.

    Args:
      field: the argument's name, for the error message.
      key: the value to check.
      allow_seed: whether a Python/NumPy integer seed stands for a key.
    """
    dtype = getattr(key, "dtype", None)
    if dtype is not None and getattr(key, "shape", None) != ():
        if np.dtype(dtype) == np.uint32 and tuple(key.shape)[-1:] == (2,):
            return
    if dtype is not None:
        import jax

        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            return
    if not allow_seed:
        raise invalid(field, key, "a PRNG key from jax.random.key(...)")
    allowed = "a jax.random.key(...) or an integer seed in [0, 2**64)"
    seed = as_int(field, key, allowed)
    if not 0 <= seed < 2**64:
        raise invalid(field, key, allowed)


def _bounds_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name if the message is empty).

    Example:
      >>> first_line(ValueError("shapes (3,) and (4,) differ\\nmore detail"))
      'shapes (3,) and (4,) differ'
      >>> first_line(KeyError())
      'KeyError'
    """
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
