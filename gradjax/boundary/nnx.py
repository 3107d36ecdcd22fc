"""NNX modules at the boundary: probes added by the submodules of a merged copy."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import get_opaque_trace_state

from gradjax.boundary.core import (
    Boundary,
    Site,
    add_probe,
    float_leaves_only,
    hashable,
    owns,
    param_paths,
    split_kwargs,
)


class _NnxPatch:
    """While active, submodules of one merged NNX copy add probes to their outputs.

    Only ``__call__`` of the classes found in the copy's graph is wrapped, and only objects of
    that copy (by identity) are probed; the original classes are restored on exit.
    """

    def __init__(
        self,
        root: Any,
        probes: Mapping[str, Any] | None,
        record: dict | None,
        edit: Callable[[str, Any], Any] | None = None,
    ):
        from flax import nnx

        self.names: dict[int, str] = {}
        classes = {}
        for path, node in nnx.iter_graph(root):
            if isinstance(node, nnx.Module) and path and callable(node):
                self.names[id(node)] = "/".join(str(p) for p in path)
                classes[type(node)] = None
        self.classes = list(classes)
        self.probes = probes or {}
        self.record = record
        self.edit = edit
        # Edits act at the level the copy is run at only (not inside an nnx.scan's body).
        self.level = get_opaque_trace_state() if edit is not None else None
        self.saved: list[tuple[type, Any]] = []

    def __enter__(self) -> _NnxPatch:
        originals = {cls: cls.__call__ for cls in self.classes}
        for cls, orig in originals.items():
            self.saved.append((cls, cls.__dict__.get("__call__")))
            cls.__call__ = self._wrap(orig)
        return self

    def __exit__(self, *exc: Any) -> None:
        for cls, own in reversed(self.saved):
            if own is None:
                del cls.__call__
            else:
                cls.__call__ = own

    def _wrap(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        patch = self

        def __call__(module, *args, **kwargs):
            name = patch.names.get(id(module))
            if name is not None and patch.record is not None and name not in patch.record:
                patch.record[name] = None  # reserved at entry: sites in pre-order
            out = orig(module, *args, **kwargs)
            if name is None or not float_leaves_only(out):
                return out
            if patch.record is not None and patch.record.get(name) is None:
                patch.record[name] = (type(module).__name__, out)
            if name in patch.probes:
                out = add_probe(out, patch.probes[name])
            if patch.edit is not None and get_opaque_trace_state() == patch.level:
                out = patch.edit(name, out)
            return out

        return __call__


def nnx_boundary(model: Any, *, apply_kwargs: Mapping[str, Any]) -> Boundary:
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    kwargs, array_kwargs = split_kwargs(apply_kwargs)

    def fresh(p, state):
        # Variables rebuilt inside the current trace: BatchNorm statistics and RNG counts
        # can then be updated by the forward pass (they belong to this copy only).
        return nnx.merge(graphdef, p, jax.tree.map(jnp.asarray, state[0]))

    def run_model(copy, x, arrays):
        # Inside nnx.capture: a model's own `self.perturb`/`sow` calls then run as Flax
        # documents them (no warning), and their intermediates are dropped.
        call = lambda m, x: m(x, **kwargs, **arrays)
        return nnx.capture(call, nnx.Perturbation)(copy, x)[0]

    def apply(p, state, x, probes, edit=None):
        copy = fresh(p, state)
        if not probes and edit is None:
            return run_model(copy, x, state[1])
        with _NnxPatch(copy, probes, None, edit):
            return run_model(copy, x, state[1])

    def discover(x):
        record: dict[str, Any] = {}

        def run(p, state, x):
            copy = fresh(p, state)
            with _NnxPatch(copy, None, record):
                run_model(copy, x, state[1])
            return {n: v[1] for n, v in record.items() if v is not None}

        shapes = jax.eval_shape(run, params, (rest, array_kwargs), x)
        ppaths = param_paths(params)
        sites = [
            Site(n, v[0], None, owns(ppaths, tuple(n.split("/"))))
            for n, v in record.items()
            if v is not None
        ]
        return sites, shapes

    key = (
        "nnx",
        graphdef,
        hashable(tuple(sorted(kwargs.items(), key=lambda kv: kv[0]))),
        tuple(sorted(array_kwargs)),
    )
    return Boundary("nnx", params, (rest, array_kwargs), key, model, apply, discover)
