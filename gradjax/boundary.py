"""The model boundary: a user's Flax Linen or NNX model, or a pure function, seen one way.

Every entry point that takes a user's model (:func:`gradjax.diagnose`, sweeps through
:func:`sweepable`, the ``--model`` option of the command line) goes through :func:`wrap`,
which returns a :class:`Boundary`:

* ``params``: the differentiable parameters (Linen ``"params"``, NNX ``nnx.Param`` state, or
  the pytree of a pure function),
* ``apply(params, x, probes)``: the forward pass, where ``probes`` (zeros) are added to the
  output of every *block*, so ``dL/dprobe`` is ``dL/da_l`` for each block output ``a_l``,
* ``blocks(x)``: the blocks in execution order.

The user's code is used as written. Linen modules are observed through
``nn.intercept_methods``: the interceptor adds a zero probe, stored as a variable of the
module's own scope, to each submodule's ``__call__`` output; a stack built with ``nn.scan``
therefore gets a probe with the same leading layer axis as its parameters, so every layer of
the stack is a block. NNX has no interceptor: the boundary works on a copy made with
``nnx.split``/``nnx.merge`` inside the traced function (so BatchNorm statistics and Dropout
RNG counts are mutated on the copy, never across trace levels) and, while tracing, wraps
``__call__`` of the copy's module classes so the copy's submodules add their probes.

Blocks are found from structure: the submodules (or layers of a scanned stack) that repeat
most under one parent, e.g. ``Block_0 .. Block_11`` of a Transformer, ``blocks/0 ..`` of an
``nnx.List``, ``trunk/0 ..`` of an ``nn.scan``; names play no part.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.errors import invalid
from gradjax.tree_paths import leaf_names, module_parts, natural_key

# Name of the probe variable a Linen submodule gets in its own "params" scope.
PROBE = "gradjax_probe"
# Sites and probe shapes by (model structure, shapes): a second look at a model is free.
_DISCOVERED: dict[Hashable, tuple[list[Site], dict[str, Any]]] = {}


class Site(NamedTuple):
    """One submodule whose output can be probed.

    Attributes:
      name: its module path joined with ``"/"`` (``"Block_3"``, ``"blocks/2"``, ``"trunk"``).
      cls: its class name.
      layers: the number of layers of a scanned stack (the probe's leading axis), or ``None``.
      has_params: whether parameters live under its path.
    """

    name: str
    cls: str
    layers: int | None
    has_params: bool


class Block(NamedTuple):
    """One block output ``a_l``: a site, or one layer of a stacked site."""

    name: str
    site: str
    layer: int | None


@dataclasses.dataclass(eq=False)
class Boundary:
    """A model seen by gradjax: parameters, a probed forward pass and its blocks.

    Attributes:
      kind: ``"linen"``, ``"nnx"`` or ``"function"``.
      params: the differentiable parameters.
      state: everything else the forward pass reads (Linen collections and RNGs, NNX
        non-parameter state), an argument of :meth:`apply` so compiled programs can be
        shared between models of one structure.
      key: a hashable description of the model's structure (for caches of compiled
        programs; the parameters' shapes and dtypes are added by the caller).
      module: the user's model object (Linen module, NNX module or function).
    """

    kind: str
    params: Any
    state: Any
    key: Hashable
    module: Any
    _apply: Callable[[Any, Any, Any, Any], Any]
    _discover: Callable[[Any], tuple[list[Site], dict[str, Any]]]

    def apply(
        self, params: Any, x: Any, probes: Mapping[str, Any] | None = None, *, state: Any = None
    ) -> Any:
        """The model's output, ``probes[site]`` added to each probed site's output.

        Args:
          params: parameters (of this model's structure).
          x: the inputs.
          probes: zero probes by site (see :meth:`zero_probes`), or ``None``.
          state: the non-differentiable state (default: this model's :attr:`state`).

        Returns:
          The output.
        """
        return self._apply(params, self.state if state is None else state, x, probes)

    def cache_key(self, *trees: Any) -> Hashable:
        """:attr:`key` with the shapes and dtypes of the parameters, state and ``trees``."""
        return (self.key, _shapes_key(self.params), _shapes_key(self.state), _shapes_key(trees))

    def _discovered(self, x: Any) -> tuple[list[Site], dict[str, Any]]:
        key = self.cache_key(x)
        if key not in _DISCOVERED:
            if len(_DISCOVERED) >= 64:
                _DISCOVERED.pop(next(iter(_DISCOVERED)))
            _DISCOVERED[key] = self._discover(x)
        return _DISCOVERED[key]

    def sites(self, x: Any) -> list[Site]:
        """Every probed submodule, in execution order (first call first)."""
        return self._discovered(x)[0]

    def blocks(self, x: Any) -> list[Block]:
        """The block outputs ``a_l`` in execution order (input side first)."""
        return choose_blocks(self.sites(x))

    def zero_probes(self, x: Any) -> dict[str, Any]:
        """Zero probes (``jax.ShapeDtypeStruct`` trees made arrays) for the block sites."""
        shapes = self._discovered(x)[1]
        names = dict.fromkeys(b.site for b in self.blocks(x))
        # NumPy zeros: no program for XLA to compile per shape.
        return {n: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes[n]) for n in names}

    def block_norms(self, probe_grads: Mapping[str, Any], x: Any) -> np.ndarray:
        """``||dL/da_l||`` per block from the gradients of the probes, ``(blocks,)``.

        On the host in float64: no overflow for huge float32 gradients, and no reductions
        for XLA to compile into the measuring program.
        """
        return _host_norms(
            [
                [v if b.layer is None else v[b.layer] for v in _leaves64(probe_grads[b.site])]
                for b in self.blocks(x)
            ]
        )

    def norm_kinds(self, x: Any) -> tuple[str, ...]:
        """The normalisation layers found among the submodules: ``"batch"``, ``"layer"``,
        ``"group"`` (RMSNorm counts as ``"layer"``)."""
        kinds = []
        for s in self.sites(x):
            c = s.cls.lower()
            if "batchnorm" in c:
                kinds.append("batch")
            elif "layernorm" in c or "rmsnorm" in c:
                kinds.append("layer")
            elif "groupnorm" in c:
                kinds.append("group")
        return tuple(dict.fromkeys(kinds))


# ---------------------------------------------------------------------------- block choice


def choose_blocks(sites: list[Site]) -> list[Block]:
    """The block outputs among the sites: the largest set of repeated siblings.

    Among the direct children of every parent path, a class repeated at least twice (a
    scanned stack counts its layers) is a candidate; repeated modules that hold submodules
    (blocks) come before repeated single layers, then those owning parameters, then the
    most repeats, then the parent nearest the root. Without any repetition the top-level
    submodules are the blocks.

    Args:
      sites: the sites in execution order.

    Returns:
      The blocks in execution order.
    """
    by_parent: dict[tuple[str, ...], list[Site]] = {}
    for s in sites:
        parts = tuple(s.name.split("/"))
        by_parent.setdefault(parts[:-1], []).append(s)
    names = [s.name for s in sites]

    def composite(site: Site) -> bool:  # holds submodules of its own (a block, not a layer)
        return any(n.startswith(site.name + "/") for n in names)

    best: tuple[tuple[bool, bool, int, int], tuple[str, ...], str] | None = None
    for parent, children in by_parent.items():
        for cls in dict.fromkeys(c.cls for c in children):
            members = [c for c in children if c.cls == cls]
            count = sum(c.layers or 1 for c in members)
            if count < 2:
                continue
            # Repeated composite modules (Transformer or residual blocks) before repeated
            # single layers (an attention's projections); then the most repeats, then the
            # parent nearest the root.
            score = (
                all(composite(c) for c in members),
                all(c.has_params for c in members),
                count,
                -len(parent),
            )
            if best is None or score > best[0]:
                best = (score, parent, cls)
    if best is None:
        chosen = [s for s in sites if "/" not in s.name]
    else:
        _, parent, cls = best
        chosen = [s for s in by_parent[parent] if s.cls == cls]
    out = []
    for s in chosen:
        if s.layers:
            out += [Block(f"{s.name}/{i}", s.name, i) for i in range(s.layers)]
        else:
            out.append(Block(s.name, s.name, None))
    return out


# ---------------------------------------------------------------------------- helpers


def _leaves64(tree: Any) -> list[np.ndarray]:
    return [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]


def _host_norms(groups: list[list[np.ndarray]]) -> np.ndarray:
    """Euclidean norm of each group of arrays, in float64 on the host."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(
            [math.sqrt(sum(float(np.sum(np.square(v))) for v in g)) for g in groups], np.float64
        )


def _shapes_key(tree: Any) -> Hashable:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (treedef, tuple((tuple(np.shape(v)), str(jnp.result_type(v))) for v in leaves))


def _float_leaves_only(out: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(out)
    return bool(leaves) and all(
        hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating) for v in leaves
    )


def _add(out: Any, probe: Any) -> Any:
    return jax.tree.map(lambda a, p: a + p.astype(a.dtype), out, probe)


def _param_paths(params: Any) -> list[tuple[str, ...]]:
    return [module_parts(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _owns(paths: list[tuple[str, ...]], site: tuple[str, ...]) -> bool:
    return any(p[: len(site)] == site and len(p) > len(site) for p in paths)


def _hashable(obj: Any) -> Hashable:
    try:
        hash(obj)
        return obj
    except TypeError:
        return ("id", id(obj))


# ---------------------------------------------------------------------------- Linen


def _linen(
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
    kwargs = dict(apply_kwargs)
    # Default: every collection but "params" may change (BatchNorm statistics in train mode);
    # the changes are discarded. Default RNGs: a fixed dropout key (same numbers every call).
    mutable = sorted(others) if mutable is None else list(mutable)
    if rngs is None:
        rngs = {"dropout": jax.random.key(0)}
    # Discovery records each probed site's class and output rank (first call); a scanned
    # stack's probe has one more axis than its output: the layer axis.
    calls: dict[tuple[str, ...], tuple[str, int] | None] = {}

    def call(params, state, x, interceptor, extra=()):
        collections, rng = state
        mut = mutable + list(extra)
        with nn.intercept_methods(interceptor):
            out = module.apply(
                {**collections, "params": params}, x, rngs=rng, mutable=mut or False, **kwargs
            )
        return out if mut else (out, {})

    def recording(next_fun, args, kw, ctx):
        path = tuple(ctx.module.path)
        if ctx.method_name == "__call__" and path and path not in calls:
            calls[path] = None  # reserved at entry: sites in pre-order (a block before its parts)
        out = next_fun(*args, **kw)
        if ctx.method_name == "__call__" and path and _float_leaves_only(out):
            if calls.get(path) is None:
                rank = jax.tree_util.tree_leaves(out)[0].ndim
                calls[path] = (type(ctx.module).__name__, rank)
            _create_probe(ctx.module, out)
        return out

    def apply(params, state, x, probes):
        if not probes:
            return call(params, state, x, lambda f, a, k, c: f(*a, **k))[0]
        wanted = {tuple(n.split("/")) for n in probes}

        def adding(next_fun, args, kw, ctx):
            out = next_fun(*args, **kw)
            if ctx.method_name == "__call__" and tuple(ctx.module.path) in wanted:
                out = _add(out, ctx.module.get_variable("params", PROBE))
            return out

        return call(_insert_probes(params, probes), state, x, adding)[0]

    def discover(x):
        calls.clear()
        _, state = jax.eval_shape(
            lambda p, s, x: call(p, s, x, recording, extra=["params"]),
            variables["params"],
            (others, rngs),
            x,
        )
        created = state["params"]
        ppaths = _param_paths(variables["params"])
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
            sites.append(Site(name, cls, layers, _owns(ppaths, path)))
        return sites, shapes

    key = (
        "linen",
        _hashable(module),
        jax.tree_util.tree_structure(others),
        _hashable(tuple(sorted(kwargs.items(), key=lambda kv: kv[0]))),
        tuple(mutable),
        jax.tree_util.tree_structure(rngs),
    )
    return Boundary("linen", variables["params"], (others, rngs), key, module, apply, discover)


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


# ---------------------------------------------------------------------------- NNX


class _NnxPatch:
    """While active, submodules of one merged NNX copy add probes to their outputs.

    Only ``__call__`` of the classes found in the copy's graph is wrapped, and only objects of
    that copy (by identity) are probed; the original classes are restored on exit.
    """

    def __init__(self, root: Any, probes: Mapping[str, Any] | None, record: dict | None):
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
            if name is None or not _float_leaves_only(out):
                return out
            if patch.record is not None and patch.record.get(name) is None:
                patch.record[name] = (type(module).__name__, out)
            if name in patch.probes:
                out = _add(out, patch.probes[name])
            return out

        return __call__


def _nnx(model: Any, *, apply_kwargs: Mapping[str, Any]) -> Boundary:
    from flax import nnx

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    kwargs = dict(apply_kwargs)

    def fresh(p, state):
        # Variables rebuilt inside the current trace: BatchNorm statistics and RNG counts
        # can then be updated by the forward pass (they belong to this copy only).
        return nnx.merge(graphdef, p, jax.tree.map(jnp.asarray, state))

    def run_model(copy, x):
        # Inside nnx.capture: a model's own `self.perturb`/`sow` calls then run as Flax
        # documents them (no warning), and their intermediates are dropped.
        return nnx.capture(lambda m, x: m(x, **kwargs), nnx.Perturbation)(copy, x)[0]

    def apply(p, state, x, probes):
        copy = fresh(p, state)
        if not probes:
            return run_model(copy, x)
        with _NnxPatch(copy, probes, None):
            return run_model(copy, x)

    def discover(x):
        record: dict[str, Any] = {}

        def run(p, state, x):
            copy = fresh(p, state)
            with _NnxPatch(copy, None, record):
                run_model(copy, x)
            return {n: v[1] for n, v in record.items() if v is not None}

        shapes = jax.eval_shape(run, params, rest, x)
        ppaths = _param_paths(params)
        sites = [
            Site(n, v[0], None, _owns(ppaths, tuple(n.split("/"))))
            for n, v in record.items()
            if v is not None
        ]
        return sites, shapes

    key = ("nnx", graphdef, _hashable(tuple(sorted(kwargs.items(), key=lambda kv: kv[0]))))
    return Boundary("nnx", params, rest, key, model, apply, discover)


# ---------------------------------------------------------------------------- functions


def _function(fn: Callable[..., Any], params: Any, perturbations: Any) -> Boundary:
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

    key = ("function", _hashable(fn), jax.tree_util.tree_structure(perturbations))
    b = Boundary("function", params, None, key, fn, apply, discover)
    if template is not None:
        # One probe tree for the function: its leaves are the blocks, in the order the traced
        # forward pass first reads them (dict keys need not sort in execution order).
        order: dict[Hashable, list[int]] = {}

        def blocks(x):
            key = _shapes_key(x)
            if key not in order:
                order[key] = _first_reads(lambda e: fn(params, x, perturbations=e), template, x)
            names = leaf_names(template)
            return [Block(names[i], "perturbations", i) for i in order[key]]

        def zero_probes(x):
            return {"perturbations": _resize(template, x)}

        def block_norms(grads, x):
            leaves = _leaves64(grads["perturbations"])
            return _host_norms([[leaves[blk.layer]] for blk in blocks(x)])

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


# ---------------------------------------------------------------------------- entry point


def wrap(
    model: Any,
    params: Any = None,
    *,
    apply_kwargs: Mapping[str, Any] | None = None,
    mutable: Any = None,
    rngs: Any = None,
    perturbations: Any = None,
) -> Boundary:
    """The :class:`Boundary` of a model.

    Args:
      model: an ``nnx.Module`` (``params`` is ``None``), a Linen module or its bound
        ``module.apply`` (``params`` are its variables: ``params``, ``batch_stats``, ...), or
        a pure function ``model(params, x)``.
      params: the Linen variables or the function's parameters.
      apply_kwargs: keyword arguments of every call (``train=True`` for a Linen model).
      mutable: Linen collections the forward pass updates (default: every collection of
        ``params`` but ``"params"``, e.g. ``batch_stats`` in train mode); the updates are
        discarded (a measurement does not train).
      rngs: Linen RNGs of the forward pass (default ``{"dropout": jax.random.key(0)}``).
      perturbations: pure functions only: zero arrays the function adds to its activations,
        passed as ``model(params, x, perturbations=...)``; each leaf is a block.

    Returns:
      The :class:`Boundary`.

    Raises:
      GradjaxInputError: for a model of no supported kind or params that do not fit it.
    """
    from flax import linen as nn
    from flax import nnx

    apply_kwargs = dict(apply_kwargs or {})
    if isinstance(model, nnx.Module):
        if params is not None:
            raise invalid("params", type(params).__name__, "None when an nnx.Module is passed")
        return _nnx(model, apply_kwargs=apply_kwargs)
    linen_module = model if isinstance(model, nn.Module) else None
    if linen_module is None and isinstance(getattr(model, "__self__", None), nn.Module):
        if getattr(model, "__name__", "") == "apply":
            linen_module = model.__self__
    if linen_module is not None:
        return _linen(linen_module, params, apply_kwargs=apply_kwargs, mutable=mutable, rngs=rngs)
    if not callable(model):
        raise invalid("model", type(model).__name__, "an nnx.Module, a Linen module, or a callable")
    return _function(model, params, perturbations)


# ---------------------------------------------------------------------------- loading


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
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise invalid("--model", spec, f"a module that imports ({first})") from None
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise invalid("--model", spec, f"a callable {attr!r} in {module_name}")
    try:
        made = factory()
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise invalid("--model", spec, f"a factory that runs ({first})") from None
    if not isinstance(made, tuple) or len(made) != 3:
        got = type(made).__name__ + (f" of {len(made)}" if isinstance(made, tuple) else "")
        raise invalid(
            "--model", spec, f"a factory returning (model, params or None, batch), not a {got}"
        )
    model, params, batch = made
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise invalid("--model", spec, "a factory whose batch is a pair (inputs, targets)")
    return model, params, tuple(batch)


# ---------------------------------------------------------------------------- sweeps


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What a sweep records about a user's model (its metadata and resume fingerprint).

    Attributes:
      model: the model's class (or function) name.
      kind: ``"linen"``, ``"nnx"`` or ``"function"``.
      blocks: number of blocks found.
      inputs: the example input's shape.
      sigma_w: the default weight scale (1: the model's own init).
      sigma_b: the default bias scale (0: the model's own, zero, biases).
    """

    model: str
    kind: str
    blocks: int
    inputs: str
    sigma_w: float = 1.0
    sigma_b: float = 0.0


@dataclasses.dataclass(frozen=True, eq=False)
class Sweepable:
    """A user's Flax model in the sweep engine's protocol (``init_base``, ``scale``).

    ``init_base(key)`` draws the model's parameters for a seed: a Linen model through its own
    ``init`` (the user's initialisers), an NNX model or a function by redrawing every kernel
    as Gaussian noise with that kernel's own standard deviation (NNX has no pure ``init``
    from a key). Every bias that sits beside a kernel gets a standard-normal base draw.
    ``scale(base, sigma_w=s, sigma_b=b)`` multiplies each kernel by ``s`` and sets each such
    bias to ``b`` times its draw: a seed's draws are shared along the scale axes (common
    random numbers), and ``sigma_w = 1``, ``sigma_b = 0`` is the model as initialised.

    Build one with :func:`sweepable`; it is hashable by identity, so the engine's compiled
    tiles are reused for it.
    """

    boundary: Boundary
    example: Any
    cfg: ModelConfig
    _linen_init: Callable[[Any], Any] | None

    @property
    def dtype(self) -> Any:
        leaves = jax.tree_util.tree_leaves(self.boundary.params)
        return jnp.result_type(*leaves) if leaves else jnp.float32

    def init_base(self, key: jax.Array) -> dict[str, Any]:
        """The base draw of one seed: ``{"params": ..., "bias_noise": ...}``."""
        k_init, k_bias = jax.random.split(key)
        if self._linen_init is not None:
            params = self._linen_init(k_init)
        else:
            leaves, treedef = jax.tree_util.tree_flatten(self.boundary.params)
            kernel = jax.tree_util.tree_leaves(_kernels(self.boundary.params))
            keys = jax.random.split(k_init, len(leaves))
            drawn = [
                jax.random.normal(kk, jnp.shape(v), jnp.result_type(v)) * jnp.std(v) if is_k else v
                for kk, v, is_k in zip(keys, leaves, kernel, strict=True)
            ]
            params = jax.tree_util.tree_unflatten(treedef, drawn)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(k_bias, len(leaves))
        noise = [
            jax.random.normal(kk, jnp.shape(v), jnp.result_type(v))
            for kk, v in zip(keys, leaves, strict=True)
        ]
        return {"params": params, "bias_noise": jax.tree_util.tree_unflatten(treedef, noise)}

    def scale(self, base: Any, *, sigma_w: Any, sigma_b: Any, lazy: bool = False) -> Any:
        """The parameters at ``(sigma_w, sigma_b)`` from a seed's base draw."""
        del lazy  # the parameters are always materialised
        kernels = _kernels(self.boundary.params)
        biases = _paired_biases(self.boundary.params)

        def one(v, noise, is_kernel, is_bias):
            if is_kernel:
                return v * jnp.asarray(sigma_w, jnp.result_type(v))
            if is_bias:
                return noise * jnp.asarray(sigma_b, jnp.result_type(v))
            return v

        return jax.tree.map(one, base["params"], base["bias_noise"], kernels, biases)


def _kernels(params: Any) -> Any:
    """Bools over ``params``: the weights and kernels (two axes or more per layer)."""
    from gradjax.tree_paths import layer_slices

    leaves, treedef = jax.tree_util.tree_flatten(params)
    flags = [False] * len(leaves)
    for s in layer_slices(params):
        flags[s.index] = flags[s.index] or s.ndim >= 2
    return jax.tree_util.tree_unflatten(treedef, flags)


def _paired_biases(params: Any) -> Any:
    """Bools over ``params``: each ``bias`` leaf whose module also holds a ``kernel``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    parts = [module_parts(p) for p, _ in paths]
    kernels = {q[:-1] for q in parts if q and q[-1] == "kernel"}
    flags = [bool(q) and q[-1] == "bias" and q[:-1] in kernels for q in parts]
    return jax.tree_util.tree_unflatten(treedef, flags)


def sweepable(
    model: Any,
    params: Any,
    example_input: Any,
    **wrap_kwargs: Any,
) -> Sweepable:
    """A user's model ready for :func:`gradjax.sweep` over seeds x init scale.

    Args:
      model: a Linen module, an ``nnx.Module`` (``params`` ``None``) or a pure function.
      params: the Linen variables or the function's parameters.
      example_input: a batch of inputs (for a Linen ``init`` and the block discovery).
      **wrap_kwargs: passed to :func:`wrap` (``apply_kwargs``, ``mutable``, ``rngs``).

    Returns:
      The :class:`Sweepable`.

    Example:
      >>> import jax, jax.numpy as jnp, gradjax as gj
      >>> from flax import linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(8), nn.tanh, nn.Dense(1)])
      >>> x = jnp.ones((4, 3)); y = jnp.zeros((4, 1))
      >>> net = gj.boundary.sweepable(model, model.init(jax.random.key(0), x), x)
      >>> probe = gj.boundary.block_gradient_probe(net, (x, y), "mse")
      >>> res = gj.sweep(net, probe, seeds=2, sigma_w=[0.5, 2.0], progress=False)
      >>> res.data["block_grad_norms"].shape  # (seed, sigma_w, block): the three Dense
      (2, 2, 3)
    """
    boundary = wrap(model, params, **wrap_kwargs)
    linen_init = None
    if boundary.kind == "linen":
        module = boundary.module

        def linen_init(key):
            return module.init({"params": key, "dropout": key}, example_input)["params"]

    name = getattr(model, "__name__", None) or type(model).__name__
    shape = jax.tree.map(lambda v: list(np.shape(v)), example_input)
    cfg = ModelConfig(
        model=str(name),
        kind=boundary.kind,
        blocks=len(boundary.blocks(example_input)),
        inputs=str(shape),
    )
    return Sweepable(boundary, example_input, cfg, linen_init)


def block_gradient_probe(net: Sweepable, batch: tuple[Any, Any], loss_fn: Any) -> Any:
    """A sweep probe: ``||dL/da_l||`` for every block of a :class:`Sweepable` model.

    Args:
      net: the model (see :func:`sweepable`).
      batch: ``(inputs, targets)`` (the same inputs for every network of the sweep).
      loss_fn: ``"mse"``, ``"xent"`` or ``loss(output, targets) -> scalar``.

    Returns:
      A :class:`gradjax.probes.Probe` whose results are ``{"loss": (), "block_grad_norms":
      (blocks,)}``, blocks input side first; ``growth`` of the series (e.g.
      :func:`gradjax.fitting.growth_per_layer`) locates the critical init (growth 1).
    """
    from gradjax.gradients import get_loss
    from gradjax.numerics import safe_norm
    from gradjax.probes import Probe

    if not isinstance(net, Sweepable):
        raise invalid("net", type(net).__name__, "a gradjax.boundary.Sweepable (sweepable(...))")
    x, y = batch
    loss = get_loss(loss_fn)
    boundary = net.boundary
    probes = boundary.zero_probes(x)
    blocks = boundary.blocks(x)

    def per_network(params, key):
        del key  # deterministic: the batch is fixed

        def objective(e):
            return loss(boundary.apply(params, x, e), y)

        value, ge = jax.value_and_grad(objective)(probes)
        norms = []
        for b in blocks:
            leaves = jax.tree_util.tree_leaves(ge[b.site])
            if b.layer is not None:
                leaves = [v[b.layer] for v in leaves]
            norms.append(safe_norm(jnp.concatenate([jnp.ravel(v) for v in leaves])))
        return {"loss": value, "block_grad_norms": jnp.stack(norms)}

    return Probe(per_network=per_network)


__all__ = [
    "PROBE",
    "Block",
    "Boundary",
    "ModelConfig",
    "Site",
    "Sweepable",
    "block_gradient_probe",
    "choose_blocks",
    "load_factory",
    "sweepable",
    "wrap",
]
