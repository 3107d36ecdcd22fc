"""``--model package.module:factory``: a user's model, parameters and batch from their own code."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from gradjax.utils.errors import first_line, invalid


def load_factory(spec: str) -> tuple[Any, Any, Any]:
    """Loads ``pkg.module:factory`` and calls the factory.

    The factory takes no arguments and returns ``(model, params_or_None, batch)``, where
    ``batch`` is ``(inputs, targets)``.

    Args:
      spec: ``"package.module:function"``.

    Returns:
      The factory's ``(model, params, batch)``.

    Raises:
      GradjaxInputError: (one line) for a malformed spec, a module that is missing or fails
        to import (a syntax error), a missing factory, or a factory returning anything else.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise invalid("--model", spec, "'package.module:factory'")
    module_name, attr = spec.split(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` would have it
    try:
        mod = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise invalid("--model", spec, f"an importable module ({err})") from None
    except SyntaxError as err:
        where = f"{err.filename}:{err.lineno}" if err.filename else "the module"
        raise invalid("--model", spec, f"a module without syntax errors ({where})") from None
    except Exception as err:  # the module's own failure, whatever its type
        raise invalid("--model", spec, f"a module that imports ({first_line(err)})") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise invalid("--model", spec, f"a callable {attr!r} in {module_name}")
    try:
        made = factory()
    except Exception as err:
        raise invalid("--model", spec, f"a factory that runs ({first_line(err)})") from None
    if not isinstance(made, tuple) or len(made) != 3:
        got = type(made).__name__ + (f" of {len(made)}" if isinstance(made, tuple) else "")
        raise invalid(
            "--model", spec, f"a factory returning (model, params or None, batch), not a {got}"
        )
    model, params, batch = made
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise invalid("--model", spec, "a factory whose batch is a pair (inputs, targets)")
    return model, params, tuple(batch)
