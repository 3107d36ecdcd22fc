"""Which kind of model a user passed: the one place that tells Linen, NNX and functions apart.

:func:`model_kind` names the kind; :func:`wrap` makes any kind a
:class:`~gradjax.boundary.core.Boundary` for measurements, and
:mod:`gradjax.boundary.trainable` makes the same kinds trainable, so a model that one entry
point accepts, every entry point accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax

from gradjax.boundary.core import Boundary
from gradjax.utils.errors import invalid

KINDS = ("nnx", "linen", "nnx_factory", "pair", "function")
DESCRIPTION = (
    "an nnx.Module, a factory rngs -> nnx.Module, a Flax Linen module (or its .apply), a "
    "pure (init_fn(key) -> params, apply_fn(params, x) -> y) pair, or a pure function "
    "model(params, x) with its params"
)


def model_kind(model: Any, params: Any = None) -> str:
    """The kind of a user's model.

    Args:
      model: the model as the user passes it.
      params: the parameters passed beside it (``None`` if none).

    Returns:
      One of :data:`KINDS`: ``"nnx"`` (a module instance), ``"linen"`` (a module or its bound
      ``apply``), ``"pair"`` (``(init_fn, apply_fn)``), ``"nnx_factory"`` (a callable
      without parameters, ``make(rngs=nnx.Rngs(key)) -> nnx.Module``) or ``"function"`` (a
      callable ``model(params, x)`` with its parameters).

    Raises:
      GradjaxInputError: for anything else.
    """
    from flax import linen as nn
    from flax import nnx

    if isinstance(model, nnx.Module):
        return "nnx"
    if isinstance(model, nn.Module) or (
        isinstance(getattr(model, "__self__", None), nn.Module)
        and getattr(model, "__name__", "") == "apply"
    ):
        return "linen"
    if isinstance(model, (tuple, list)):
        if len(model) == 2 and all(callable(f) for f in model):
            return "pair"
        raise invalid("model", type(model).__name__, DESCRIPTION)
    if callable(model):
        return "function" if params is not None else "nnx_factory"
    raise invalid("model", type(model).__name__, DESCRIPTION)


def linen_module(model: Any) -> Any:
    """The Linen module of a ``"linen"`` model (the module itself, or its ``apply``'s owner)."""
    from flax import linen as nn

    return model if isinstance(model, nn.Module) else model.__self__


def nnx_from_factory(factory: Any, key: Any) -> Any:
    """The ``nnx.Module`` a factory makes from ``key`` (refused if it makes anything else)."""
    from flax import nnx

    made = factory(rngs=nnx.Rngs(key))
    if not isinstance(made, nnx.Module):
        raise invalid("model", getattr(factory, "__name__", type(factory).__name__), DESCRIPTION)
    return made


def wrap(
    model: Any,
    params: Any = None,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    mutable: Any = None,
    rngs: Any = None,
    perturbations: Any = None,
) -> Boundary:
    """The :class:`~gradjax.boundary.core.Boundary` of a model.

    Args:
      model: an ``nnx.Module`` (``params`` is ``None``) or a factory of one, a Linen module or
        its bound ``module.apply`` (``params`` are its variables: ``params``,
        ``batch_stats``, ...), a pure function ``model(params, x)``, or a pair
        ``(init_fn, apply_fn)`` (initialised with key 0 when ``params`` is ``None``).
      params: the Linen variables or the function's parameters.
      apply_kwargs: keyword arguments of every call (``train=True`` for a Linen model).
      mutable: Linen collections the forward pass updates (default: every collection of
        ``params`` but ``"params"``, e.g. ``batch_stats`` in train mode); the updates are
        discarded (a measurement does not train).
      rngs: Linen RNGs of the forward pass (default ``{"dropout": jax.random.key(0)}``).
      perturbations: pure functions only: zero arrays the function adds to its activations,
        passed as ``model(params, x, perturbations=...)``; each leaf is a block.

    Returns:
      The :class:`~gradjax.boundary.core.Boundary`.

    Raises:
      GradjaxInputError: for a model of no supported kind or params that do not fit it.
    """
    apply_kwargs = dict(apply_kwargs or {})
    kind = model_kind(model, params)
    if kind == "nnx_factory":
        model, kind = nnx_from_factory(model, 0), "nnx"
    if kind == "nnx":
        from gradjax.boundary.nnx import nnx_boundary

        if params is not None:
            raise invalid("params", type(params).__name__, "None when an nnx.Module is passed")
        return nnx_boundary(model, apply_kwargs=apply_kwargs)
    if kind == "linen":
        from gradjax.boundary.linen import linen_boundary

        return linen_boundary(
            linen_module(model), params, apply_kwargs=apply_kwargs, mutable=mutable, rngs=rngs
        )
    from gradjax.boundary.function import function_boundary

    if kind == "pair":
        init_fn, model = model
        if params is None:
            params = init_fn(jax.random.key(0))
    return function_boundary(model, params, perturbations)
