"""Frozen pytree dataclasses for named results (no bare tuples of arrays)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is pytree metadata (hashable, not traced)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_dataclass(cls: type) -> type:
    """Makes ``cls`` a frozen dataclass registered as a JAX pytree.

    Fields made with :func:`static_field` become metadata; all others are children, so the
    result passes through ``jit``, ``vmap`` and the sweep engine unchanged.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = [f.name for f in fields if not f.metadata.get("static", False)]
    meta = [f.name for f in fields if f.metadata.get("static", False)]
    return jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
