"""Names of pytree paths: one spelling for a parameter's place in a model.

A leaf's name is its path's entries (dict keys, attribute names, sequence indices) joined
with ``"/"``: ``"input/W"``, ``"params/Dense_0/kernel"``, ``"blocks/3/attn/kernel"``.
"""

from __future__ import annotations

from typing import Any

import jax


def key_name(key: Any) -> str:
    """The text of one pytree path entry (dict key, attribute name or sequence index)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_parts(path: Any) -> tuple[str, ...]:
    """The entries of a pytree path as strings."""
    return tuple(key_name(k) for k in path)


def path_name(path: Any, *, sep: str = "/") -> str:
    """A pytree path as one string, its entries joined with ``sep``."""
    return sep.join(path_parts(path))


def leaf_paths(tree: Any) -> list[tuple[str, ...]]:
    """The path parts of every leaf of ``tree``, in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [path_parts(path) for path, _ in flat]


def leaf_names(tree: Any, *, sep: str = "/") -> list[str]:
    """The name of every leaf of ``tree`` (``"value"`` for a bare array), in flattening order."""
    return [sep.join(parts) or "value" for parts in leaf_paths(tree)]
