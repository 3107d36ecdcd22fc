"""``--model package.module:factory``: a user's model, parameters and batch from their own code.

The factory takes no arguments and returns ``(model, params_or_None, (inputs, targets))``,
optionally followed by a dict of forward-pass options: ``{"rngs": {"dropout": key},
"apply_kwargs": {"train": True}, "mutable": ["batch_stats"]}`` (the keyword arguments of
:func:`gradjax.boundary.wrap`), for models that need an RNG or extra inputs to run.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any, NamedTuple

from gradjax.utils.errors import first_line, invalid

# The forward-pass options a factory may return (keyword arguments of boundary.wrap).
OPTIONS = ("rngs", "apply_kwargs", "mutable")


class Loaded(NamedTuple):
    """What a factory made: the model, its parameters, one batch and forward-pass options."""

    model: Any
    params: Any
    batch: tuple[Any, Any]
    options: dict[str, Any]


def load_factory(spec: str) -> Loaded:
    """Loads ``pkg.module:factory`` and calls the factory.

    Whatever the factory prints goes to standard error, so a command's JSON on standard
    output stays valid.

    Args:
      spec: ``"package.module:function"``.

    Returns:
      The :class:`Loaded` model, parameters, batch and options.

    Raises:
      GradjaxInputError: (one line) for a malformed spec, a module that is missing or fails
        to import (a syntax error), a missing factory, a factory that exits or raises, or a
        factory returning anything else.
    """
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise invalid("--model", spec, "'package.module:factory'")
    module_name, attr = spec.split(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # the working directory, as `python -m` would have it
    try:
        with contextlib.redirect_stdout(sys.stderr):
            mod = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise invalid("--model", spec, f"an importable module ({err})") from None
    except SyntaxError as err:
        where = f"{err.filename}:{err.lineno}" if err.filename else "the module"
        raise invalid("--model", spec, f"a module without syntax errors ({where})") from None
    except SystemExit as err:
        raise invalid("--model", spec, f"a module that imports without exiting ({err})") from None
    except Exception as err:  # the module's own failure, whatever its type
        raise invalid("--model", spec, f"a module that imports ({first_line(err)})") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise invalid("--model", spec, f"a callable {attr!r} in {module_name}")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            made = factory()
    except SystemExit as err:
        raise invalid(
            "--model", spec, f"a factory that returns instead of exiting (sys.exit({err.code}))"
        ) from None
    except Exception as err:
        raise invalid("--model", spec, f"a factory that runs ({first_line(err)})") from None
    if not isinstance(made, tuple) or len(made) not in (3, 4):
        got = type(made).__name__ + (f" of {len(made)}" if isinstance(made, tuple) else "")
        raise invalid(
            "--model",
            spec,
            f"a factory returning (model, params or None, batch[, options]), not a {got}",
        )
    model, params, batch = made[:3]
    options = made[3] if len(made) == 4 else {}
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise invalid("--model", spec, "a factory whose batch is a pair (inputs, targets)")
    if not isinstance(options, dict) or set(options) - set(OPTIONS):
        extra = sorted(set(options) - set(OPTIONS)) if isinstance(options, dict) else options
        raise invalid(
            "--model", spec, f"options with keys among {', '.join(OPTIONS)} (got {extra})"
        )
    return Loaded(model, params, tuple(batch), dict(options))
