"""Names of pytree paths: one spelling for a parameter's place in a model.

A leaf's name is its path's entries (dict keys, attribute names, sequence indices) joined
with ``"/"``: ``"input/W"``, ``"params/Dense_0/kernel"``, ``"blocks/3/attn/kernel"``.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

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


# Path entries that name a variable's payload rather than a module (NNX ``Variable.value``).
PAYLOAD_KEYS = ("value", "raw_value")


def module_parts(path: Any) -> tuple[str, ...]:
    """The entries of a leaf's path without a trailing variable payload (NNX ``.value``)."""
    parts = list(path_parts(path))
    while parts and parts[-1] in PAYLOAD_KEYS:
        parts.pop()
    return tuple(parts)


def stacked_prefixes(tree: Any) -> set[tuple[str, ...]]:
    """Path prefixes whose leaves stack layers along axis 0, found from the shapes alone.

    A subtree holding two or more leaves is a stack of ``L`` layers (a Linen ``nn.scan``
    module, an NNX ``nnx.vmap``-created stack, gradjax's ``params["hidden"]``) when every leaf
    under it has at least two axes, all share the leading size ``L >= 2``, and their numbers
    of axes differ (a kernel ``(L, in, out)`` beside a bias or scale ``(L, out)``): an
    unstacked module's bias or scale has one axis. The outermost such subtree wins; names
    play no part, so a user's attribute called ``hidden`` is one module like any other.

    Args:
      tree: a parameter or gradient pytree.

    Returns:
      The prefixes (tuples of path entries) of the stacked subtrees.
    """
    import numpy as np

    leaves = [
        (module_parts(path), np.shape(leaf))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    # Proper subtrees only (prefixes of one entry or more): the whole tree is the model.
    candidates = sorted({parts[:k] for parts, _ in leaves for k in range(1, len(parts))}, key=len)
    found: set[tuple[str, ...]] = set()
    for prefix in candidates:
        if any(prefix[: len(f)] == f for f in found):
            continue
        shapes = [s for parts, s in leaves if parts[: len(prefix)] == prefix]
        if len(shapes) < 2 or any(len(s) < 2 for s in shapes):
            continue
        if len({s[0] for s in shapes}) == 1 and shapes[0][0] >= 2:
            if len({len(s) for s in shapes}) > 1:
                found.add(prefix)
    return found


class LeafSlice(NamedTuple):
    """One leaf of a pytree, or one layer of a stacked leaf, with its module group.

    Attributes:
      index: the leaf's position in flattening order.
      name: its path joined with ``"/"``, the layer index inserted after the stack's prefix.
      group: the module path (the name without the variable name).
      layer: the layer of a stacked leaf, or ``None``.
      ndim: number of axes of the slice (2 or more: a weight or kernel).
    """

    index: int
    name: str
    group: str
    layer: int | None
    ndim: int


def layer_slices(tree: Any, *, stacked: Any = None) -> list[LeafSlice]:
    """Every leaf of ``tree`` (every layer of a stacked one) with its module group.

    This is gradjax's one grouping of parameters by layer: a leaf's group is its module path
    (``"Dense_0"``, ``"blocks/3/attn"``), and a stacked subtree (see :func:`stacked_prefixes`)
    is split into one group per layer (``"trunk/0/Dense_0"``, ``"trunk/1/Dense_0"``, ...).

    Args:
      tree: a parameter or gradient pytree (Linen ``params``, an NNX ``State``, any dict).
      stacked: prefixes of the stacked subtrees (tuples of path entries); default: found by
        :func:`stacked_prefixes`.

    Returns:
      The slices in flattening order (layer by layer within a stacked leaf).
    """
    import numpy as np

    prefixes = stacked_prefixes(tree) if stacked is None else {tuple(p) for p in stacked}
    out: list[LeafSlice] = []
    for index, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        parts = module_parts(path)
        shape = np.shape(leaf)
        hit = next((p for p in prefixes if parts[: len(p)] == p and len(parts) > len(p)), None)
        if hit is not None and len(shape) >= 1:
            at = len(hit)
            for layer in range(shape[0]):
                full = (*parts[:at], str(layer), *parts[at:])
                out.append(
                    LeafSlice(index, "/".join(full), "/".join(full[:-1]), layer, len(shape) - 1)
                )
        else:
            name = "/".join(parts) or "value"
            group = "/".join(parts[:-1]) if len(parts) > 1 else name
            out.append(LeafSlice(index, name, group, None, len(shape)))
    return out


def natural_key(text: str) -> list[Any]:
    """Sort key under which ``"layer_2"`` comes before ``"layer_10"``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
