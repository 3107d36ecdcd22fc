"""Jacobian spectra of a user's model between consecutive block outputs, matrix-free.

The map of block ``l`` is ``a_{l-1} -> a_l``: everything the forward pass computes from one
block output to the next, with all else held (a Transformer block with its residual, a
ResNet stage, one layer of a scanned stack). It is read from the model as written, through
the boundary (:class:`gradjax.boundary.Boundary`), with no hand-written layer maps:

* blocks run at the forward pass's own level (``Block_0 .. Block_11``, ``layers/0 ..``):
  :meth:`~gradjax.boundary.Boundary.apply` with an edit that *replaces* block ``l-1``'s
  output by the map's argument and *captures* block ``l``'s output. The blocks before ``l-1``
  and after ``l`` are then dead code, which XLA removes;
* blocks that are layers of a scanned stack (Linen ``nn.scan``, ``nnx.vmap`` + ``nnx.scan``):
  the map is one step of the scan, along its own trajectory
  (:meth:`~gradjax.boundary.Boundary.observe_layers`).

A pure function's blocks are perturbations whose values gradjax cannot see: it is refused
(its layers can be given to :func:`gradjax.diagnose` as ``layers=``).

Per map, through ``jvp``/``vjp`` only (:mod:`gradjax.measure.matrix_free`):

* ``sigma_max``: Lanczos on ``J^T J`` (full reorthogonalisation, Rayleigh-Ritz);
* ``mean_sq``: ``tr(J^T J) / min(n_in, n_out)`` (the mean over the singular values): exact
  on the Lanczos Krylov space, Hutchinson (Rademacher probes) on the rest, as in Hutch++
  (Meyer et al. 2021), so the few large singular values of a residual block cost no
  variance.

Examples of a batch do not mix in most models, so ``J`` is block-diagonal over examples and
one run gives every example's own values (one Lanczos recurrence per example, side by
side); reported values are the mean over examples. Whether examples mix (BatchNorm in train
mode) is measured, not assumed: a tangent on the first example that reaches another
example's output. Such a model's maps are measured over the whole batch (one Jacobian).
Where one example's Jacobian has at most ``exact_max_entries`` entries it is also formed
(one ``jvp`` per input coordinate) and decomposed, giving every singular value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.measure.matrix_free import hutchinson_trace, lanczos_basis, ritz_top_eigenvalue
from gradjax.utils.caching import BoundedCache
from gradjax.utils.errors import GradjaxInputError, check_int
from gradjax.utils.lapack import after, singular_values

__all__ = ["BlockSpectra", "block_maps", "block_spectra", "measure_maps"]

_PROGRAMS = BoundedCache(16)


@dataclasses.dataclass(frozen=True)
class BlockSpectra:
    """Spectra of the block-to-block Jacobians ``da_l/da_{l-1}`` of one model and batch.

    Attributes:
      names: for each map, the block whose output it produces (the second block onwards).
      sources: for each map, the block whose output it reads.
      sigma_max: top singular value of each map, mean over examples, ``(maps,)``.
      mean_sq: mean squared singular value ``tr(J^T J) / min(n_in, n_out)``, mean over
        examples, ``(maps,)``.
      sigma_max_examples: per example, ``(maps, examples)`` (one column when coupled).
      mean_sq_examples: per example, ``(maps, examples)``.
      io_sigma_max: the same for the map from the first block's output to the last one's.
      io_mean_sq: its mean squared singular value.
      coupled: whether examples mix in the maps (then one Jacobian over the whole batch).
      exact: per map, every singular value of each example's Jacobian ``(examples, k)``
        where it was small enough to form, else ``None``.
      lanczos_steps: Lanczos steps per map.
      probes: Hutchinson probes per map.
    """

    names: tuple[str, ...]
    sources: tuple[str, ...]
    sigma_max: np.ndarray
    mean_sq: np.ndarray
    sigma_max_examples: np.ndarray
    mean_sq_examples: np.ndarray
    io_sigma_max: float
    io_mean_sq: float
    coupled: bool
    exact: tuple[np.ndarray | None, ...]
    lanczos_steps: int
    probes: int


# ---------------------------------------------------------------------------- block maps


def block_maps(
    boundary: Any, x: Any
) -> tuple[tuple[str, ...], Callable[[Any, Any], tuple[list[Any], list[Callable]]]]:
    """The block-to-block maps of a model: names, and a traceable builder of the maps.

    Args:
      boundary: the model (:func:`gradjax.boundary.wrap`).
      x: the inputs.

    Returns:
      ``(names, build)``: ``names`` the blocks, input side first; ``build(params, state)``
      returns ``(sources, maps)``: ``maps[l - 1]`` is the function ``a_{l-1} -> a_l`` (on
      lists of arrays) for ``l >= 1`` and ``sources[l - 1]`` the point ``a_{l-1}`` it is
      measured at; a last entry is the map from block 0's output to the last block's.

    Raises:
      GradjaxInputError: for a pure function (its blocks are perturbations whose values
        gradjax cannot see), or fewer than two blocks.
    """
    if boundary.kind == "function":
        raise GradjaxInputError(
            "model: block spectra need a Linen or NNX model; a pure function's blocks are "
            "perturbations, whose values gradjax cannot see (use diagnose(layers=...))"
        )
    blocks = boundary.blocks(x)
    stacked = [s for s in boundary.scans(x) if s.axis == "layers"]
    if stacked or any(b.layer is not None for b in blocks):
        return _scan_maps(boundary, x)
    names = tuple(b.name for b in blocks)
    if len(names) < 2:
        raise GradjaxInputError(
            f"model: block spectra need at least two blocks; found {len(names)} "
            f"({', '.join(names) or 'none'})"
        )
    return names, _site_builder(boundary, x, names)


def _site_builder(boundary: Any, x: Any, names: tuple[str, ...]):
    def capture(params, state):
        got: dict[str, Any] = {}

        def edit(name, out):
            if name in names and name not in got:
                got[name] = out
            return out

        boundary.apply(params, x, state=state, edit=edit)
        return [jax.tree_util.tree_leaves(got[n]) for n in names]

    def map_between(params, state, source: str, target: str) -> Callable:
        def f(leaves):
            got: dict[str, Any] = {}
            replaced = set()

            def edit(name, out):
                if name == source and name not in replaced:
                    replaced.add(name)  # the first call only: a shared module may run again
                    treedef = jax.tree_util.tree_structure(out)
                    return jax.tree_util.tree_unflatten(treedef, leaves)
                if name == target and target not in got:
                    got[target] = out
                return out

            boundary.apply(params, x, state=state, edit=edit)
            return jax.tree_util.tree_leaves(got[target])

        return f

    def build(params, state):
        points = capture(params, state)
        pairs = list(zip(names, names[1:], strict=False)) + [(names[0], names[-1])]
        maps = [map_between(params, state, a, b) for a, b in pairs]
        return points[:-1] + [points[0]], maps

    return build


def _scan_maps(boundary: Any, x: Any):
    names = boundary.block_names(x)
    scans = boundary.observe_layers(boundary.params, x, lambda *a: None, state=boundary.state)[0]
    if len(scans) != 1 or scans[0].length != len(names) or len(names) < 2:
        raise GradjaxInputError(
            f"model: block spectra of scanned layers need one stack of two or more layers; "
            f"found {len(scans)} scans over layers for {len(names)} blocks"
        )

    def build(params, state):
        seen = boundary.observe_layers(params, x, lambda *a: a, state=state)[1]
        scan, one_step, before, xs = seen[0]

        def step_at(t):  # block t's map: step t of the scan, the rest of its carry held
            carry = [c[t] for c in before]
            return lambda h: list(one_step(carry, h, [v[t] for v in xs]))

        def io(h):
            for t in range(1, scan.length):
                h = step_at(t)(h)
            return h

        sources = [[before[p][t] for p in scan.perturbed] for t in range(1, scan.length)]
        return sources + [sources[0]], [step_at(t) for t in range(1, scan.length)] + [io]

    return names, build


# ---------------------------------------------------------------------------- measurement


def block_spectra(
    boundary: Any,
    x: Any,
    *,
    lanczos_steps: int = 32,
    probes: int = 32,
    exact_max_entries: int = 0,
    seed: int = 0,
) -> BlockSpectra:
    """Top and mean squared singular values of every block-to-block Jacobian of a model.

    Args:
      boundary: the model (:func:`gradjax.boundary.wrap`).
      x: the inputs (batch on axis 0).
      lanczos_steps: Lanczos steps per map.
      probes: Hutchinson probes per map.
      exact_max_entries: also form each example's Jacobian and take every singular value
        where it has at most this many entries (0: never).
      seed: seed of the start vectors and probes.

    Returns:
      A :class:`BlockSpectra` (host arrays, float64).

    Raises:
      GradjaxInputError: for a pure function, fewer than two blocks, or an empty batch.
    """
    check_int("lanczos_steps", lanczos_steps, minimum=1)
    check_int("probes", probes, minimum=2)
    check_int("exact_max_entries", exact_max_entries, minimum=0)
    leaves = jax.tree_util.tree_leaves(x)
    batch = int(np.shape(leaves[0])[0]) if leaves and np.ndim(leaves[0]) else 0
    if batch < 1:
        raise GradjaxInputError("x: block spectra need a batch with at least one example")
    names, build = block_maps(boundary, x)
    # Per example first; the same program says whether the examples mix, and only then is
    # the whole-batch program compiled and run.
    for coupled in (False, True):
        key = (boundary.cache_key(x), lanczos_steps, probes, exact_max_entries, seed, coupled)
        if key not in _PROGRAMS:
            options = (lanczos_steps, probes, exact_max_entries, seed, coupled, batch)
            _PROGRAMS[key] = jax.jit(lambda p, s, o=options: measure_maps(build(p, s), *o))
        found = jax.device_get(_PROGRAMS[key](boundary.params, boundary.state))
        if not found["mixed"]:
            break
    sig = np.asarray(found["sigma_max"], np.float64)
    msq = np.asarray(found["mean_sq"], np.float64)
    exact = tuple(None if e is None else np.asarray(e, np.float64) for e in found["exact"][:-1])
    return BlockSpectra(
        names=names[1:],
        sources=names[:-1],
        sigma_max=sig[:-1].mean(axis=1),
        mean_sq=msq[:-1].mean(axis=1),
        sigma_max_examples=sig[:-1],
        mean_sq_examples=msq[:-1],
        io_sigma_max=float(sig[-1].mean()),
        io_mean_sq=float(msq[-1].mean()),
        coupled=coupled,
        exact=exact,
        lanczos_steps=lanczos_steps,
        probes=probes,
    )


def _rows(leaves: list[Any], groups: int) -> jax.Array:
    """The arrays of one block output as ``(groups, n)`` rows (examples, or the batch)."""
    return jnp.concatenate([jnp.reshape(a, (groups, -1)) for a in leaves], axis=1)


def _unrows(rows: jax.Array, template: list[Any]) -> list[Any]:
    out, at = [], 0
    for a in template:
        size = math.prod(a.shape)
        out.append(jnp.reshape(rows[:, at : at + size // rows.shape[0]], a.shape).astype(a.dtype))
        at += size // rows.shape[0]
    return out


def _per_example(leaves: list[Any], batch: int) -> bool:
    return all(a.ndim >= 1 and a.shape[0] == batch for a in leaves)


def _row_map(f: Callable, point: list[Any], groups: int) -> Callable:
    return lambda rows: _rows(f(_unrows(rows, point)), groups)


def measure_maps(
    built: tuple[list[Any], list[Callable]],
    steps: int,
    probes: int,
    exact_max: int,
    seed: int,
    coupled: bool,
    batch: int,
) -> dict[str, Any]:
    """Lanczos ``sigma_max`` and Krylov-plus-Hutchinson ``mean_sq`` of every map (traceable).

    Args:
      built: ``(sources, maps)`` from the builder of :func:`block_maps`.
      steps: Lanczos steps.
      probes: Hutchinson probes.
      exact_max: form and decompose maps with at most this many entries per example.
      seed: seed of the start vectors and probes.
      coupled: measure over the whole batch (examples mix) instead of per example.
      batch: the number of examples.

    Returns:
      ``{"sigma_max": (maps, groups), "mean_sq": (maps, groups), "exact": [array | None],
      "mixed": ()}``, groups the examples (one when coupled); ``mixed``: measured per example,
      whether the examples mix after all (a tangent on the first example reaches another
      example's output, or a block output has no batch axis): then the values are not
      valid and the maps must be measured with ``coupled``.
    """
    sources, maps = built
    if not coupled and not all(_per_example(a, batch) for a in sources):
        nan = jnp.full((len(maps), batch), jnp.nan)
        return {"sigma_max": nan, "mean_sq": nan, "exact": [None] * len(maps), "mixed": True}
    groups = 1 if coupled else batch
    key = jax.random.key(seed)
    bases, mean_sq, pushes, mixed = [], [], [], []
    for i, (source, f) in enumerate(zip(sources, maps, strict=True)):
        krylov, value, push = _one_map(f, source, groups, jax.random.fold_in(key, i), steps, probes)
        bases.append(krylov)
        mean_sq.append(value)
        pushes.append(push)
        if groups > 1:  # a tangent on the first example only: does it reach the others?
            a = _rows(source, groups)
            reach = push(jnp.zeros_like(a).at[0].set(1.0))
            mixed.append(jnp.any(reach[1:] != 0))
    tops = ritz_top_eigenvalue(*bases)
    sigma = jnp.stack([jnp.sqrt(jnp.maximum(t.value, 0.0)) for t in tops])
    # Exact spectra last, each SVD after the one before and after the eigensolver: no two
    # LAPACK calls of one program are independent (see gradjax.utils.lapack).
    exact, last = [], sigma
    for push, source in zip(pushes, sources, strict=True):
        a = _rows(source, groups)
        n, m = a.shape[1], jax.eval_shape(push, a).shape[1]
        if n * m <= exact_max:
            last = _exact(push, groups, n, a.dtype, last)
            exact.append(last)
        else:
            exact.append(None)
    return {
        "sigma_max": sigma,
        "mean_sq": jnp.stack(mean_sq),
        "exact": exact,
        "mixed": jnp.any(jnp.stack(mixed)) if mixed else jnp.asarray(False),
    }


def _one_map(f: Callable, source: list[Any], groups: int, key: jax.Array, steps: int, probes: int):
    """The Krylov basis of ``J^T J``, the mean squared singular value and ``v -> J v`` of
    one map, on ``(groups, n)`` rows."""
    a = _rows(source, groups)
    g = _row_map(f, source, groups)
    n = a.shape[1]
    # One linearisation; its transpose is the vjp (no second forward pass to compile).
    out, push = jax.linearize(g, a)
    pull = jax.linear_transpose(push, a)
    krylov = lanczos_basis(lambda v: pull(push(v))[0], jax.random.fold_in(key, 0), size=n,
                           dtype=a.dtype, steps=steps, groups=groups)  # fmt: skip
    # tr(J^T J) = the trace over the Krylov space (exact, from the stored images) + the trace
    # of the rest by Hutchinson on probes projected off that space: the top of the spectrum,
    # where most of plain Hutchinson's variance comes from, is no longer sampled.
    within = jnp.sum(krylov.basis * krylov.images, axis=(1, 2))
    q = krylov.basis

    def outside(z):
        z = z - jnp.einsum("gmn,gm->gn", q, jnp.einsum("gmn,gn->gm", q, z))
        return jnp.sum(jnp.square(push(z)), axis=1)

    trace = hutchinson_trace(
        outside, jax.random.fold_in(key, 1), in_shape=(groups, n), dtype=a.dtype, probes=probes
    )
    return krylov, (within + trace.value) / min(n, out.shape[1]), push


def _exact(push: Callable, groups: int, n: int, dtype, previous: jax.Array) -> jax.Array:
    """Every singular value of each group's Jacobian: one ``jvp`` per input coordinate (all
    groups at once), then one batched SVD, started after ``previous`` is computed."""
    columns = jax.lax.map(lambda k: push(jnp.zeros((groups, n), dtype).at[:, k].set(1.0)),
                          jnp.arange(n), batch_size=min(n, 64))  # fmt: skip
    jac = jnp.transpose(columns, (1, 2, 0))  # (groups, out, in)
    return singular_values(after(jac, previous))
