"""Pure functions at the boundary: the zero ``perturbations`` a function adds are its probes."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

from gradjax.boundary.core import (
    Block,
    Boundary,
    Site,
    hashable,
    host_norms,
    leaves64,
    shapes_key,
)
from gradjax.utils.tree_paths import leaf_names, natural_key


def function_boundary(fn: Callable[..., Any], params: Any, perturbations: Any) -> Boundary:
    template = perturbations

    def apply(p, state, x, probes):
        if template is None:
            return fn(p, x)
        if not probes:
            probes = {"perturbations": _resize(template, x)}
        return fn(p, x, perturbations=probes["perturbations"])

    def discover(x):
        if template is None:
            return [], {}
        zeros = _resize(template, x)
        names = leaf_names(zeros)
        shapes = {"perturbations": jax.eval_shape(lambda: zeros)}
        return [Site(n, "perturbation", None, False) for n in names], shapes

    key = ("function", hashable(fn), jax.tree_util.tree_structure(perturbations))
    b = Boundary("function", params, None, key, fn, apply, discover)
    if template is not None:
        # One probe tree for the function: its leaves are the blocks, in the order the traced
        # forward pass first reads them (dict keys need not sort in execution order).
        order: dict[Hashable, list[int]] = {}

        def blocks(x):
            key = shapes_key(x)
            if key not in order:
                order[key] = _first_reads(lambda e: fn(params, x, perturbations=e), template, x)
            names = leaf_names(template)
            return [Block(names[i], "perturbations", i) for i in order[key]]

        def zero_probes(x):
            return {"perturbations": _resize(template, x)}

        def block_norms(grads, x):
            leaves = leaves64(grads["perturbations"])
            return host_norms([[leaves[blk.layer]] for blk in blocks(x)])

        b.blocks = blocks  # type: ignore[method-assign]
        b.zero_probes = zero_probes  # type: ignore[method-assign]
        b.block_norms = block_norms  # type: ignore[method-assign]
    else:
        b.blocks = lambda x: []  # type: ignore[method-assign]
        b.zero_probes = lambda x: {}  # type: ignore[method-assign]
    return b


def first_use(fn: Callable[[Any], Any], tree: Any) -> list[float]:
    """For each leaf of ``tree``, the index of the first equation of ``fn``'s jaxpr reading it.

    Execution order from the traced program itself, so it needs no naming convention.

    Args:
      fn: a function of a pytree shaped like ``tree``.
      tree: the argument (arrays or shape structures).

    Returns:
      One index per leaf, in flattening order (``inf`` for a leaf ``fn`` never reads).
    """
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    closed = jax.make_jaxpr(lambda ls: fn(jax.tree_util.tree_unflatten(treedef, ls)))(leaves)
    first: dict[Any, int] = {}
    for i, eqn in enumerate(closed.jaxpr.eqns):
        for v in eqn.invars:
            if not hasattr(v, "val"):  # a variable, not a literal
                first.setdefault(v, i)
    return [float(first.get(v, math.inf)) for v in closed.jaxpr.invars]


def _first_reads(fn: Callable[[Any], Any], template: Any, x: Any) -> list[int]:
    """Leaf indices of ``template`` sorted by the first equation of ``fn``'s jaxpr reading them."""
    zeros = _resize(template, x)
    leaves = jax.tree_util.tree_leaves(zeros)
    uses = first_use(fn, zeros)
    # Ties (leaves read by one equation, e.g. stacked together) in natural order of names.
    names = leaf_names(template)
    return sorted(range(len(leaves)), key=lambda i: (uses[i], natural_key(names[i])))


def _resize(template: Any, x: Any) -> Any:
    """Zero perturbations for the batch of ``x`` (leaves with a batch axis 0 resized)."""
    leaves = jax.tree_util.tree_leaves(x)
    size = int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else None
    first = jax.tree_util.tree_leaves(template)
    full = int(np.shape(first[0])[0]) if first and np.ndim(first[0]) else None
    if size is None or size == full:
        return jax.tree.map(lambda v: np.zeros(np.shape(v), np.asarray(v).dtype), template)
    return jax.tree.map(lambda v: np.zeros((size, *np.shape(v)[1:]), np.asarray(v).dtype), template)
