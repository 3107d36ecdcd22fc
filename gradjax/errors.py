"""Errors raised on bad input: one line naming the field, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


class GradjaxInputError(ValueError):
    """Bad input to a gradjax function, config or command.

    The message always names the offending field, the value it got, and what is allowed,
    so the command line can print it as a single line and exit with status 2.
    """


def invalid(field: str, value: Any, allowed: str) -> GradjaxInputError:
    """Builds the standard error for ``field=value`` with a description of what is allowed."""
    return GradjaxInputError(f"{field}={value!r} is invalid: expected {allowed}")


def check_choice(field: str, value: Any, choices: Iterable[str]) -> None:
    """Raises unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise invalid(field, value, "one of " + ", ".join(repr(c) for c in choices))


def check_int(field: str, value: Any, *, minimum: int | None = None, maximum: int | None = None):
    """Raises unless ``value`` is an integer (not a bool) in ``[minimum, maximum]``."""
    bounds = _bounds_text(minimum, maximum)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, value, f"an integer{bounds}")
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
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)  # NumPy and JAX scalars
        except (TypeError, ValueError):
            raise invalid(field, value, what) from None
    if not math.isfinite(value):
        raise invalid(field, value, what)
    if strictly_positive and value <= 0:
        raise invalid(field, value, what)
    if minimum is not None and value < minimum:
        raise invalid(field, value, what)


def _bounds_text(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
