"""Linen modules at the boundary: probes added through ``nn.intercept_methods``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import get_opaque_trace_state

from gradjax.boundary.core import (
    PROBE,
    Boundary,
    Site,
    add_probe,
    float_leaves_only,
    hashable,
    owns,
    param_paths,
    split_kwargs,
)
from gradjax.utils.errors import invalid


def linen_boundary(
    module: Any,
    variables: Any,
    *,
    apply_kwargs: Mapping[str, Any],
    mutable: Any,
    rngs: Any,
) -> Boundary:
    from flax import linen as nn

    if not isinstance(variables, Mapping) or "params" not in variables:
        raise invalid(
            "params",
            type(variables).__name__,
            "the Linen variables of the model (a dict with a 'params' collection)",
        )
    others = {k: v for k, v in variables.items() if k != "params"}
    kwargs, array_kwargs = split_kwargs(apply_kwargs)
    # Default: every collection but "params" may change (BatchNorm statistics in train mode);
    # the changes are discarded. Default RNGs: a fixed dropout key (same numbers every call).
    mutable = sorted(others) if mutable is None else list(mutable)
    if rngs is None:
        rngs = {"dropout": jax.random.key(0)}
    # Discovery records each probed site's class and output rank (first call); a scanned
    # stack's probe has one more axis than its output: the layer axis.
    calls: dict[tuple[str, ...], tuple[str, int] | None] = {}

    def call(params, state, x, interceptor, extra=()):
        collections, rng, arrays = state
        mut = mutable + list(extra)
        with nn.intercept_methods(interceptor):
            out = module.apply(
                {**collections, "params": params},
                x,
                rngs=rng,
                mutable=mut or False,
                **kwargs,
                **arrays,
            )
        return out if mut else (out, {})

    def recording(next_fun, args, kw, ctx):
        path = tuple(ctx.module.path)
        if ctx.method_name == "__call__" and path and path not in calls:
            calls[path] = None  # reserved at entry: sites in pre-order (a block before its parts)
        out = next_fun(*args, **kw)
        if ctx.method_name == "__call__" and path and float_leaves_only(out):
            if calls.get(path) is None:
                rank = jax.tree_util.tree_leaves(out)[0].ndim
                calls[path] = (type(ctx.module).__name__, rank)
            _create_probe(ctx.module, out)
        return out

    def apply(params, state, x, probes, edit=None):
        if not probes and edit is None:
            return call(params, state, x, lambda f, a, k, c: f(*a, **k))[0]
        wanted = {tuple(n.split("/")) for n in probes or ()}
        level = get_opaque_trace_state() if edit is not None else None

        def adding(next_fun, args, kw, ctx):
            out = next_fun(*args, **kw)
            if ctx.method_name != "__call__":
                return out
            path = tuple(ctx.module.path)
            if path in wanted:
                out = add_probe(out, ctx.module.get_variable("params", PROBE))
            # Edits act at the forward pass's own level only: a value inside a scan's body
            # belongs to another trace.
            if edit is not None and path and get_opaque_trace_state() == level:
                if float_leaves_only(out):
                    out = edit("/".join(path), out)
            return out

        return call(_insert_probes(params, probes or {}), state, x, adding)[0]

    def discover(x):
        calls.clear()
        _, state = jax.eval_shape(
            lambda p, s, x: call(p, s, x, recording, extra=["params"]),
            variables["params"],
            (others, rngs, array_kwargs),
            x,
        )
        created = state["params"]
        ppaths = param_paths(variables["params"])
        sites, shapes = [], {}
        for path, found in calls.items():
            if found is None:  # a call whose output is not floating-point arrays
                continue
            cls, ndim = found
            node = created
            for part in path:
                node = node[part]
            probe = node[PROBE]
            first = jax.tree_util.tree_leaves(probe)[0]
            layers = int(first.shape[0]) if first.ndim > ndim else None
            name = "/".join(path)
            shapes[name] = probe
            sites.append(Site(name, cls, layers, owns(ppaths, path)))
        return sites, shapes

    key = (
        "linen",
        hashable(module),
        jax.tree_util.tree_structure(others),
        hashable(tuple(sorted(kwargs.items(), key=lambda kv: kv[0]))),
        tuple(mutable),
        jax.tree_util.tree_structure(rngs),
        tuple(sorted(array_kwargs)),
    )
    state = (others, rngs, array_kwargs)
    return Boundary("linen", variables["params"], state, key, module, apply, discover)


def _create_probe(module: Any, out: Any) -> None:
    """Creates the zero probe variable of ``module`` (also for ``setup``-style modules).

    Flax allows new variables only in ``setup`` or an ``@compact`` method; the probe belongs
    to the boundary, not to the user's module, so creation is allowed for this one call.
    """
    state = module._state
    before = state.in_compact_method
    state.in_compact_method = True
    try:
        module.variable(
            "params", PROBE, lambda: jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), out)
        )
    finally:
        state.in_compact_method = before


def _insert_probes(params: Any, probes: Mapping[str, Any]) -> Any:
    """``params`` with each probe stored as ``PROBE`` in its site's scope (dicts copied)."""
    out = dict(params)
    for name, probe in probes.items():
        node = out
        for part in name.split("/"):
            node[part] = dict(node.get(part, {}))
            node = node[part]
        node[PROBE] = probe
    return out
