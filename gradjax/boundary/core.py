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
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.boundary.recurrence import Scan, analyse, kernel_depths, perturbed_call
from gradjax.utils.caching import BoundedCache
from gradjax.utils.errors import invalid
from gradjax.utils.tree_paths import module_parts

# Name of the probe variable a Linen submodule gets in its own "params" scope.
PROBE = "gradjax_probe"
# Sites and probe shapes by (model structure, shapes): a second look at a model is free.
_DISCOVERED = BoundedCache(64)
# Scans over time and the sites that run inside them, by (model structure, shapes).
_RECURRENCE = BoundedCache(64)


def clear_discovered() -> None:
    """Forgets the blocks discovered so far (the next look at a model traces it again)."""
    _DISCOVERED.clear()
    _RECURRENCE.clear()


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
    _apply: Callable[..., Any]
    _discover: Callable[[Any], tuple[list[Site], dict[str, Any]]]

    def apply(
        self,
        params: Any,
        x: Any,
        probes: Mapping[str, Any] | None = None,
        *,
        state: Any = None,
        edit: Callable[[str, Any], Any] | None = None,
    ) -> Any:
        """The model's output, ``probes[site]`` added to each probed site's output.

        Args:
          params: parameters (of this model's structure).
          x: the inputs.
          probes: zero probes by site (see :meth:`zero_probes`), or ``None``.
          state: the non-differentiable state (default: this model's :attr:`state`).
          edit: optional ``edit(site, output) -> output``, called on the output of every
            site run at the forward pass's own level (not inside a scan), after its probe:
            it may record the output or replace it. Linen and NNX models only.

        Returns:
          The output.
        """
        state = self.state if state is None else state
        if edit is None:
            return self._apply(params, state, x, probes)
        if self.kind == "function":
            raise invalid(
                "model",
                "a pure function",
                "a Linen or NNX model (its blocks are "
                "perturbations, whose values gradjax cannot see)",
            )
        return self._apply(params, state, x, probes, edit)

    def cache_key(self, *trees: Any) -> Hashable:
        """:attr:`key` with the shapes and dtypes of the parameters, state and ``trees``."""
        return (self.key, shapes_key(self.params), shapes_key(self.state), shapes_key(trees))

    def _discovered(self, x: Any) -> tuple[list[Site], dict[str, Any]]:
        return _DISCOVERED.get_or_make(self.cache_key(x), lambda: self._discover(x))

    def sites(self, x: Any) -> list[Site]:
        """Every probed submodule, in execution order (first call first)."""
        return self._discovered(x)[0]

    def blocks(self, x: Any) -> list[Block]:
        """The block outputs ``a_l`` in execution order (input side first).

        Submodules run inside a recurrence over time (an RNN cell's gates) are layers of one
        step, not blocks of the model's depth: they are left out before blocks are chosen.
        """
        inside = self._recurrence(x)[1]
        return choose_blocks([s for s in self.sites(x) if s.name not in inside])

    def scans(self, x: Any) -> tuple[Scan, ...]:
        """The scans whose carry the measuring program perturbs step by step
        (:mod:`gradjax.boundary.recurrence`): every recurrence over time and, for a model
        whose stacks the probes cannot reach layer by layer (``nnx.scan`` over layers, a
        pure function scanning stacked parameters), its scans over layers."""
        return self._recurrence(x)[0]

    def block_names(self, x: Any) -> tuple[str, ...]:
        """The names of the block outputs ``a_l`` measured, input side first: the layers of
        the perturbed scans over layers (``blocks/0``, ...) when there are any, else
        :meth:`blocks`."""
        stacks = [s for s in self.scans(x) if s.axis == "layers"]
        if stacks:
            return tuple(f"{s.name}/{i}" for s in stacks for i in range(s.length))
        return tuple(b.name for b in self.blocks(x))

    def time_scans(self, x: Any) -> tuple[Scan, ...]:
        """The recurrences over time of the forward pass."""
        return tuple(s for s in self.scans(x) if s.axis == "time")

    def apply_perturbed(
        self,
        params: Any,
        x: Any,
        probes: Any,
        perturbations: Sequence[Any],
        *,
        state: Any,
        observe: Callable[..., Any] | None = None,
    ) -> Any:
        """:meth:`apply` with ``perturbations[k][j][t]`` added to carry value ``j`` of scan
        ``k`` of :meth:`scans` after step ``t``, so their gradients are ``dL/dh_t`` (works
        under ``jit``).

        Args:
          params: parameters.
          x: the inputs.
          probes: block probes, as for :meth:`apply`.
          perturbations: for each of :meth:`scans`, its carry perturbations.
          state: the non-differentiable state.
          observe: passed to :func:`recurrence.perturbed_call` (each scan's step map and
            trajectory).

        Returns:
          The output; with ``observe``, ``(output, observations)``.
        """
        closed, scans, out_tree, flat, _ = self._traced(params, probes, state, x)
        chosen = [s for s in scans if s.axis == "time" or self._recurrence(x)[3]]
        if observe is None:
            outs = perturbed_call(closed, chosen, flat, perturbations)
            return jax.tree_util.tree_unflatten(out_tree, outs)
        outs, seen = perturbed_call(closed, chosen, flat, perturbations, observe)
        return jax.tree_util.tree_unflatten(out_tree, outs), seen

    def observe_layers(
        self, params: Any, x: Any, observe: Callable[..., Any], *, state: Any
    ) -> tuple[tuple[Scan, ...], list[Any]]:
        """Every scan over layers of the forward pass (also a Linen ``nn.scan`` stack, which
        the probes reach layer by layer), each shown to ``observe`` as
        :func:`recurrence.perturbed_call` shows it (its step map, the carry before every
        step and the scanned inputs); works under ``jit``.

        Args:
          params: parameters.
          x: the inputs.
          observe: ``observe(scan, step, carries, xs)``.
          state: the non-differentiable state.

        Returns:
          ``(scans, observations)``, in execution order.
        """
        closed, scans, _, flat, _ = self._traced(params, None, state, x)
        chosen = [s for s in scans if s.axis == "layers"]
        zeros = [[jnp.zeros(c.shape, c.dtype) for c in s.shapes] for s in chosen]
        return tuple(chosen), perturbed_call(closed, chosen, flat, zeros, observe)[1]

    def skip_connections(self, x: Any) -> bool | None:
        """Whether the blocks add their input through a shorter path than their branch,
        read from the traced computation (:func:`recurrence.kernel_depths` between
        consecutive blocks); ``None`` when no two consecutive blocks can be compared."""
        return self._recurrence(x)[4]

    def blocks_repeat(self, x: Any) -> bool:
        """Whether the blocks are a repeated stack: two or more of one class, each fed by the
        one before (:meth:`blocks_in_sequence`); a pure function's perturbations always are.
        """
        if self.kind == "function":
            return True  # the caller's perturbations name the blocks
        classes = {s.name: s.cls for s in self.sites(x)}
        blocks = self.blocks(x)
        return (
            len(blocks) >= 2
            and len({classes[b.site] for b in blocks}) == 1
            and self.blocks_in_sequence(x)
        )

    def blocks_in_sequence(self, x: Any) -> bool:
        """Whether each block's output depends on the block before it (a stack), as the
        traced computation shows; ``False`` for parallel branches such as the two
        directions of a bidirectional RNN. Layers of one scanned stack count as in sequence.
        """
        upstream = self._recurrence(x)[2]
        blocks = self.blocks(x)
        return all(
            a.site == b.site or b.site not in upstream or a.site in upstream[b.site]
            for a, b in zip(blocks, blocks[1:], strict=False)
        )

    def _traced(self, params: Any, probes: Any, state: Any, x: Any, probe_mask: bool = False):
        """The forward pass traced on flat inputs, its scans over time and, with
        ``probe_mask``, what each probe leaf is added to (:func:`recurrence.analyse`)."""
        flat, treedef = jax.tree_util.tree_flatten((params, probes, state, x))
        n_x = len(jax.tree_util.tree_leaves(x))
        n_p = len(jax.tree_util.tree_leaves(params))
        n_e = len(jax.tree_util.tree_leaves(probes))
        input_mask = ((1 << n_x) - 1) << (len(flat) - n_x)

        def forward(*leaves):
            p, e, s, xx = jax.tree_util.tree_unflatten(treedef, leaves)
            return self._apply(p, s, xx, e)

        closed, out_shape = jax.make_jaxpr(forward, return_shape=True)(*flat)
        mask = ((1 << n_e) - 1) << n_p if probe_mask else 0
        scans, added = analyse(closed, input_mask, mask)
        scans = tuple(self._named(s, params) for s in scans)
        return closed, scans, jax.tree_util.tree_structure(out_shape), flat, added

    def _named(self, scan: Scan, params: Any) -> Scan:
        """A scan over layers is named by the module path its stacked parameters share; a
        Linen name stack loses the root module's class name."""
        if scan.axis == "layers":
            paths = [
                module_parts(p)
                for i, (p, _) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0])
                if scan.xs_from >> i & 1
            ]
            shared = paths[0] if paths else ()
            for parts in paths[1:]:
                k = 0
                while k < min(len(shared), len(parts)) and shared[k] == parts[k]:
                    k += 1
                shared = shared[:k]
            if shared:
                return dataclasses.replace(scan, name="/".join(shared))
        if self.kind == "linen" and "/" in scan.name:
            return dataclasses.replace(scan, name=scan.name.split("/", 1)[1])
        return scan

    def _recurrence(self, x: Any) -> tuple:
        return _RECURRENCE.get_or_make(self.cache_key(x), lambda: self._find_recurrence(x))

    def _find_recurrence(self, x: Any) -> tuple:
        """Scans to perturb, the sites inside recurrences, for each site the sites upstream,
        and whether scans over layers are perturbed.

        One trace with a probe on every site: a probe that reaches a scan's loop-invariant
        operands sits on a submodule that runs inside it; the value a probe is added to
        depends on the probes of the sites upstream of it.
        """
        sites, shapes = self._discovered(x)
        probes = (
            {}
            if self.kind == "function"
            else {n: jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes[n]) for n in shapes}
        )
        closed, scans, _, _, added = self._traced(self.params, probes or None, self.state, x, True)
        bits: dict[str, int] = {}
        offset = len(jax.tree_util.tree_leaves(self.params))
        for name in sorted(probes):  # a dict flattens in sorted key order
            count = len(jax.tree_util.tree_leaves(probes[name]))
            bits[name] = ((1 << count) - 1) << offset
            offset += count
        reached = 0
        for scan in scans:
            if scan.axis == "time":
                reached |= scan.consts_from
        inside = frozenset(n for n, b in bits.items() if b & reached)
        upstream = {}
        for name, b in bits.items():
            feeds = [d for k, d in added.items() if b >> k & 1]
            if feeds:
                union = 0
                for d in feeds:
                    union |= d
                upstream[name] = frozenset(m for m, mb in bits.items() if m != name and mb & union)
        n_params = len(jax.tree_util.tree_leaves(self.params))
        chosen_blocks = choose_blocks([s for s in sites if s.name not in inside])
        residual = _skips(closed, chosen_blocks, bits, (1 << n_params) - 1)
        if scans and inside:
            # The scans as the measuring program sees them: probes on the blocks only (a probe
            # inside a step would make the step's output a different value from its carry).
            chosen = {b.site for b in chosen_blocks}
            kept = {n: e for n, e in probes.items() if n in chosen}
            scans = self._traced(self.params, kept or None, self.state, x)[1]
        # Stacks the probes reach layer by layer (a Linen nn.scan) need no perturbed scan, nor
        # does a function whose caller's perturbations name its blocks.
        layers = not any(site.layers for site in sites) and not (self.kind == "function" and sites)
        scans = tuple(s for s in scans if s.axis == "time" or layers)
        return scans, inside, upstream, layers, residual

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
        return host_norms(
            [
                [v if b.layer is None else v[b.layer] for v in leaves64(probe_grads[b.site])]
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


def _skips(closed: Any, blocks: list[Block], bits: dict[str, int], param_mask: int) -> bool | None:
    """Whether any pair of consecutive blocks has a path with fewer kernels than another."""
    pairs = [(a.site, b.site) for a, b in zip(blocks, blocks[1:], strict=False) if a.site != b.site]
    found = None
    for a, b in pairs[:4]:  # a few pairs decide; a deep stack repeats its first blocks
        if a not in bits or b not in bits:
            continue
        depths = kernel_depths(closed, bits[a], bits[b], param_mask)
        if depths is not None:
            found = bool(found) or depths[0] < depths[1]
    return found


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


def leaves64(tree: Any) -> list[np.ndarray]:
    return [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]


def host_norms(groups: list[list[np.ndarray]]) -> np.ndarray:
    """Euclidean norm of each group of arrays, in float64 on the host."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(
            [math.sqrt(sum(float(np.sum(np.square(v))) for v in g)) for g in groups], np.float64
        )


def shapes_key(tree: Any) -> Hashable:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return (treedef, tuple((tuple(np.shape(v)), str(jnp.result_type(v))) for v in leaves))


def float_leaves_only(out: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(out)
    return bool(leaves) and all(
        hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating) for v in leaves
    )


def add_probe(out: Any, probe: Any) -> Any:
    return jax.tree.map(lambda a, p: a + p.astype(a.dtype), out, probe)


def param_paths(params: Any) -> list[tuple[str, ...]]:
    return [module_parts(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def owns(paths: list[tuple[str, ...]], site: tuple[str, ...]) -> bool:
    return any(p[: len(site)] == site and len(p) > len(site) for p in paths)


def split_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(static, arrays)``: keyword arguments of the forward pass split by kind.

    Arrays (a batch's sequence lengths, a mask) travel as traced inputs of the compiled
    programs, so a new array of the same shape reuses them; everything else (``train=True``)
    is part of the program's cache key.
    """
    arrays = {k: v for k, v in kwargs.items() if hasattr(v, "shape") and hasattr(v, "dtype")}
    return {k: v for k, v in kwargs.items() if k not in arrays}, arrays


def hashable(obj: Any) -> Hashable:
    try:
        hash(obj)
        return obj
    except TypeError:
        return ("id", id(obj))
