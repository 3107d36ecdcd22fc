"""The measurements behind :func:`gradjax.diagnose` on a model as its user wrote it.

One jitted program per model structure, shapes and loss (:func:`gradient_program`) pulls a
weighted output cotangent back through the model: with all weights 1 it gives the full-batch
parameter gradient and ``dL/da_l`` for every block; with the indicator of a slice of the
batch, that slice's share (:func:`slice_norms`); with the kernels inside the blocks set to
zero, whether a skip connection carries the first block's output (:func:`residual_test`).
Norms are taken on the host in float64 (:func:`leaf_norms`, :func:`combine_norms`), and
parameter slices are put in execution order (:func:`param_order`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.boundary.core import Boundary
from gradjax.boundary.function import first_use
from gradjax.measure.fit_checks import checked_output, output_shape
from gradjax.utils.caching import BoundedCache
from gradjax.utils.errors import GradjaxInputError, first_line, invalid
from gradjax.utils.tree_paths import layer_slices, module_parts, natural_key

# Compiled measuring programs by (model structure, shapes, loss, options); bounded.
_PROGRAMS: BoundedCache = BoundedCache(32)
# Whether a model's blocks are residual, and its output shapes, by (structure, shapes).
_RESIDUAL: BoundedCache = BoundedCache(32)

__all__ = [
    "Flow",
    "TimeChain",
    "Measurement",
    "clear_caches",
    "compiled_programs",
    "check_params_finite",
    "combine_norms",
    "gradient_program",
    "leaf_norms",
    "param_order",
    "residual_test",
    "slice_norms",
    "time_chains",
]


def compiled_programs() -> tuple[Callable[..., Any], ...]:
    """The measuring programs compiled so far (oldest first; at most 32 are kept)."""
    return tuple(_PROGRAMS.values())


def clear_caches() -> None:
    """Forgets every compiled measuring program, traced shape and discovered block.

    The next measurement of any model then compiles again (a cold start, as in a new process).
    """
    from gradjax.boundary.core import clear_discovered
    from gradjax.measure import fit_checks

    for cache in (_PROGRAMS, _RESIDUAL, fit_checks._OUTPUTS):
        cache.clear()
    clear_discovered()


def check_params_finite(params: Any) -> None:
    """Refuses traced or non-finite parameters, naming up to five offending leaves.

    Args:
      params: a pytree of concrete arrays.

    Raises:
      GradjaxInputError: if a leaf is a tracer (a call under ``jit``) or holds NaN/inf.
    """
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(leaf, jax.core.Tracer):
            raise GradjaxInputError(
                "params is invalid here: diagnose runs on concrete arrays (call it outside jit)"
            )
        value = np.asarray(leaf)
        if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
            bad.append("/".join(module_parts(path)) or "leaf")
    if bad:
        raise invalid(
            "params",
            f"non-finite values in {', '.join(bad[:5])}" + (" ..." if len(bad) > 5 else ""),
            "finite parameters (NaN/inf in the parameters themselves, not the gradients)",
        )


def leaf_norms(tree: Any, slices: list) -> np.ndarray:
    """Frobenius norms of every leaf (or stacked slice), in ``slices`` order, on the host.

    In float64: no overflow for huge float32 gradients (an exploding run stays measurable
    until its values are non-finite), and no reductions for XLA to compile.
    """
    flat = [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]
    out = np.empty(len(slices))
    with np.errstate(over="ignore", invalid="ignore"):
        for j, s in enumerate(slices):
            value = flat[s.index] if s.layer is None else flat[s.index][s.layer]
            out[j] = math.sqrt(float(np.sum(np.square(value))))
    return out


def combine_norms(norms: np.ndarray, members: list[list[int]]) -> np.ndarray:
    """The norm of each group of leaves from the leaves' norms, in float64.

    Args:
      norms: one norm per leaf (:func:`leaf_norms`).
      members: for each group, the indices of its leaves.

    Returns:
      ``sqrt(sum(norms[m]^2))`` for each group ``m``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(
            [math.sqrt(float(np.sum(np.square(norms[m], dtype=np.float64)))) for m in members]
        )


def param_order(boundary: Boundary, slices: list, x: Any) -> list[int]:
    """Parameter slices in execution order.

    Flax models: the order in which their modules were first called (a stack's layers in
    turn); pure functions: the first equation of the traced forward pass that reads each
    leaf. Ties by natural order of the names.
    """
    if boundary.kind == "function":
        uses = first_use(lambda p: boundary.apply(p, x), boundary.params)
        return sorted(
            range(len(slices)),
            key=lambda i: (
                uses[slices[i].index],
                slices[i].layer or 0,
                natural_key(slices[i].name),
            ),
        )
    sites = {tuple(s.name.split("/")): i for i, s in enumerate(boundary.sites(x))}
    leaf_parts = [
        module_parts(p) for p, _ in jax.tree_util.tree_flatten_with_path(boundary.params)[0]
    ]

    def site_of(parts: tuple[str, ...], outermost: bool) -> int:
        found = [sites[parts[:k]] for k in range(1, len(parts)) if parts[:k] in sites]
        if not found:
            return -1
        return found[0] if outermost else found[-1]

    def key(i: int):
        s = slices[i]
        parts = leaf_parts[s.index]
        if s.layer is None:
            return (site_of(parts, False), 0, -1, natural_key(s.name))
        return (site_of(parts, True), s.layer, site_of(parts, False), natural_key(s.name))

    return sorted(range(len(slices)), key=key)


def _kernel_mask(boundary: Boundary, x: Any) -> Any:
    """Which parameter leaves are kernels (two axes or more per layer) inside a block."""
    block_sites = {tuple(b.site.split("/")) for b in boundary.blocks(x)}
    paths, treedef = jax.tree_util.tree_flatten_with_path(boundary.params)
    kernel = [False] * len(paths)
    for s in layer_slices(boundary.params):
        parts = module_parts(paths[s.index][0])
        if s.ndim >= 2 and any(parts[: len(b)] == b for b in block_sites):
            kernel[s.index] = True
    return jax.tree_util.tree_unflatten(treedef, kernel)


def _every_block_has_kernels(boundary: Boundary, x: Any, mask: Any) -> bool:
    """Whether every block owns a kernel that :func:`residual_test` zeroes."""
    paths = jax.tree_util.tree_flatten_with_path(boundary.params)[0]
    owned = [
        module_parts(p) for (p, _), zero in zip(paths, jax.tree.leaves(mask), strict=True) if zero
    ]
    return all(
        any(parts[: len(site)] == site for parts in owned)
        for site in {tuple(b.site.split("/")) for b in boundary.blocks(x)}
    )


def gradient_program(
    boundary: Boundary, loss: Callable[..., Any], x: Any, y: Any, probes: Any
) -> Callable[..., Any]:
    """The one jitted program of a diagnosis, cached by structure, shapes and loss.

    ``program(params, state, probes, x, y, weights)`` pulls ``weights[i] * dL/dout_i`` back
    through the model: with all weights 1 it is the full-batch gradient (and ``dL/da_l`` for
    every block, ``dL/dh_t`` for every step of every recurrence over time); with the
    indicator of a slice of examples it is that slice's share of it.
    One compiled program serves the full batch and every slice.
    """
    key = (boundary.cache_key(x, y, probes), loss if _is_hashable(loss) else id(loss))
    if key in _PROGRAMS:
        return _PROGRAMS[key]

    scans = boundary.scans(x)

    def forward(p, e, t, state, x):
        if not scans:
            return boundary.apply(p, x, e, state=state)
        return boundary.apply_perturbed(p, x, e, t, state=state)

    def measure(p, state, e, x, y, weights):
        # Zero perturbations of every perturbed scan's carry at every step: dL/dt is dL/dh_t.
        t = [[jnp.zeros(s.shape, s.dtype) for s in scan.shapes] for scan in scans]
        out, pullback = jax.vjp(lambda p, e, t: forward(p, e, t, state, x), p, e, t)
        value, cot = jax.value_and_grad(lambda o: loss(o, y))(out)
        cot = jax.tree.map(
            lambda c: c * weights.reshape((-1,) + (1,) * (c.ndim - 1)).astype(c.dtype), cot
        )
        gp, ge, gt = pullback(cot)
        # Norms are taken on the host (float64): the program is the gradient and no more.
        return value, gp, ge, gt

    program = jax.jit(measure)
    _PROGRAMS[key] = program
    return program


def slice_norms(
    program: Callable[..., Any], boundary: Boundary, probes: Any, x: Any, y: Any, k: int
) -> np.ndarray:
    """Global gradient norm of ``k`` slices of the batch (the observed distribution).

    Slice ``i``'s share of the full-batch gradient times ``n / size_i``: for a mean loss
    without batch coupling exactly the gradient of that slice alone; the shares add up to the
    full-batch gradient for any loss (BatchNorm included). Needs outputs with a batch axis 0.
    """
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    out_shape = output_shape(boundary, x, probes)
    if not k or not all(
        np.ndim(o) >= 1 and np.shape(o)[0] == n for o in jax.tree_util.tree_leaves(out_shape)
    ):
        return np.zeros((0,))
    m = n // k
    chunk = np.minimum(np.arange(n) // m, k - 1)  # the last slice takes the remainder
    out = []
    for i in range(k):
        weights = (chunk == i).astype(np.float32)
        grads = jax.device_get(program(boundary.params, boundary.state, probes, x, y, weights)[1])
        norm = math.sqrt(
            sum(
                float(np.sum(np.square(np.asarray(v, np.float64))))
                for v in jax.tree_util.tree_leaves(grads)
            )
        )
        out.append(norm * n / float(np.sum(chunk == i)))
    return np.asarray(out, np.float64)


def residual_test(
    program: Callable[..., Any], boundary: Boundary, probes: Any, x: Any, y: Any
) -> bool | None:
    """Whether the blocks are residual.

    Between blocks of different submodules, from the traced computation: a path with fewer
    kernels than another (:meth:`gradjax.boundary.Boundary.skip_connections`). Between the
    layers of one scanned stack: whether the first block's output reaches the loss with every
    kernel inside the blocks set to zero (only a skip connection carries it then).

    Two runs of the diagnosis' own compiled program (no new compilation), with the zeroed
    kernels, the first block's probe at zero and at a fixed random value: the losses differ
    exactly when the output depends on that block's output.
    """
    key = boundary.cache_key(x, y, probes)
    if key in _RESIDUAL:
        return _RESIDUAL[key]
    blocks = boundary.blocks(x)
    if boundary.kind == "function" or len(blocks) < 2:
        return None
    skips = boundary.skip_connections(x)
    if skips is not None:  # read from the traced computation between consecutive blocks
        _RESIDUAL[key] = skips
        return skips
    first = blocks[0]
    mask = _kernel_mask(boundary, x)
    if not _every_block_has_kernels(boundary, x, mask):
        _RESIDUAL[key] = None  # a block computing with kernels it does not own: not testable
        return None
    # NumPy on the host: no small programs for XLA to compile just to make inputs.
    zeroed = jax.tree.map(
        lambda v, z: np.zeros(np.shape(v), np.asarray(v).dtype) if z else v, boundary.params, mask
    )
    leaves, treedef = jax.tree_util.tree_flatten(probes[first.site])
    rng = np.random.default_rng(0)
    noise = [rng.standard_normal(np.shape(v)).astype(np.asarray(v).dtype) for v in leaves]
    if first.layer is not None:  # a stacked site: move only the first layer's output
        for v in noise:
            v[np.arange(v.shape[0]) != first.layer] = 0
    moved = {**probes, first.site: jax.tree_util.tree_unflatten(treedef, noise)}
    ones = np.ones((jax.tree_util.tree_leaves(x)[0].shape[0],), np.float32)
    still = float(program(zeroed, boundary.state, probes, x, y, ones)[0])
    shaken = float(program(zeroed, boundary.state, moved, x, y, ones)[0])
    result = still != shaken and math.isfinite(shaken)
    _RESIDUAL[key] = result
    return result


def _is_hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class TimeChain:
    """The gradient reaching every step of one recurrence over time (host arrays, float64).

    Attributes:
      axis: ``"time"``, or ``"layers"`` for a scanned stack (its steps are layers).
      name: where the recurrence runs (its module's path, or ``scan_<i>``).
      steps: the time indices in the order the recurrence runs them (a reversed scan, e.g.
        the backward direction of a bidirectional RNN, from the last index to the first).
      norms: ``||dL/dh_t||`` over the batch, in that order (``h``: the carry values the step
        also emits; all carry values when it emits none).
      state_norms: ``||dL/dc_t||`` of the other carry values (an LSTM's cell state), or
        ``None`` when there are none.
      tiny: the smallest normal number of the carry's dtype: a norm at or below it has
        underflowed.
    """

    axis: str
    name: str
    steps: np.ndarray
    norms: np.ndarray
    state_norms: np.ndarray | None
    tiny: float


def time_chains(scans: Any, grads: Any) -> tuple[TimeChain, ...]:
    """Per-step norms of the carry gradients of every recurrence (:class:`TimeChain`).

    Args:
      scans: the scans (:meth:`gradjax.boundary.Boundary.scans`).
      grads: for each, the gradients of its carry perturbations, ``(steps, ...)`` each.

    Returns:
      One chain per recurrence, in execution order.
    """
    out = []
    for scan, g in zip(scans, grads, strict=True):
        hidden = scan.hidden if any(scan.hidden) else (True,) * len(scan.hidden)

        def per_step(chosen: list[Any], steps: int = scan.length) -> np.ndarray:
            with np.errstate(over="ignore", invalid="ignore"):
                sq = sum(
                    np.sum(np.square(np.asarray(v, np.float64)).reshape(steps, -1), axis=1)
                    for v in chosen
                )
                return np.sqrt(sq)

        order = np.arange(scan.length)[::-1] if scan.reverse else np.arange(scan.length)
        state = [v for v, h in zip(g, hidden, strict=True) if not h]
        out.append(
            TimeChain(
                axis=scan.axis,
                name=scan.name,
                steps=order,
                norms=per_step([v for v, h in zip(g, hidden, strict=True) if h])[order],
                state_norms=per_step(state)[order] if state else None,
                tiny=float(np.finfo(scan.shapes[0].dtype).tiny),
            )
        )
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Flow:
    """What one batch measured of a model's gradient flow (host arrays, float64).

    Attributes:
      kind: the model's kind (``"linen"``, ``"nnx"``, ``"function"``).
      loss: the loss on the batch.
      leaf_names: parameter leaves in execution order.
      leaf_grad_norms: ``||dL/dtheta||`` per leaf.
      leaf_param_norms: ``||theta||`` per leaf.
      groups: module groups (one per layer of a stack), in execution order.
      group_grad_norms: gradient norm per group.
      group_weight_grad_norms: gradient norm of each group's matrices (``nan``: none).
      group_has_matrices: whether each group holds a matrix or kernel.
      group_param_norms: parameter norm per group.
      block_names: block outputs ``a_l`` in execution order.
      block_grad_norms: ``||dL/da_l||`` per block.
      global_norm: the full-batch global gradient norm.
      microbatch_global_norms: the global norms of slices of the batch.
      residual: whether the blocks are residual (``None``: not testable).
      norms_found: the normalisation layers found among the submodules.
      time_chains: ``||dL/dh_t||`` per step of every recurrence over time
        (:class:`TimeChain`), in execution order; empty for a model without one.
      blocks_repeat: whether the blocks are a repeated stack (two or more of one class, each
        fed by the one before), not the top-level submodules of a model without repetition
        or parallel branches.
    """

    kind: str
    loss: float
    leaf_names: tuple[str, ...]
    leaf_grad_norms: np.ndarray
    leaf_param_norms: np.ndarray
    groups: tuple[str, ...]
    group_grad_norms: np.ndarray
    group_weight_grad_norms: np.ndarray
    group_has_matrices: tuple[bool, ...]
    group_param_norms: np.ndarray
    block_names: tuple[str, ...]
    block_grad_norms: np.ndarray
    global_norm: float
    microbatch_global_norms: np.ndarray
    residual: bool | None
    norms_found: tuple[str, ...]
    time_chains: tuple[TimeChain, ...] = ()
    blocks_repeat: bool = True


class Measurement:
    """One model on one batch: the compiled gradient program, its probes and cached shapes.

    Building it checks the batch and the loss against the model's shapes (before anything
    runs); :meth:`flow` then measures. Compiled programs are shared with every other
    measurement of a model of the same structure and shapes.

    Args:
      boundary: the model (:func:`gradjax.boundary.wrap`).
      loss: ``loss(output, targets) -> scalar``.
      x: the inputs (batch on axis 0).
      y: the targets.

    Raises:
      GradjaxInputError: if the inputs do not fit the model, the targets the loss, or the
        loss is not a scalar.
    """

    def __init__(self, boundary: Boundary, loss: Callable[..., Any], x: Any, y: Any) -> None:
        self.boundary, self.loss, self.x, self.y = boundary, loss, x, y
        try:
            self.probes = boundary.zero_probes(x)
        except GradjaxInputError:
            raise
        except Exception as err:  # the model failed while its blocks were found
            raise invalid(
                "batch inputs shape",
                jax.tree.map(np.shape, x),
                f"inputs the model accepts (it failed with: {first_line(err)})",
            ) from None
        checked_output(boundary, loss, x, y, self.probes)
        self.program = gradient_program(boundary, loss, x, y, self.probes)
        self.size = int(np.shape(jax.tree_util.tree_leaves(x)[0])[0])
        self.param_grads: Any = None

    def objective(self, params: Any, probes: Any, x: Any, y: Any) -> Any:
        """The loss as a function of parameters and probes (for the first-step probe)."""
        return self.loss(self.boundary.apply(params, x, probes), y)

    def kernel_scale_growth(self, scales: np.ndarray) -> np.ndarray:
        """Backward growth per block with every kernel multiplied by each of ``scales``.

        Runs of the compiled gradient program (nothing new to compile): the measured answer
        to "which weight scale makes this model's gradient flat", for any architecture.

        Args:
          scales: the kernel multipliers.

        Returns:
          The growth per block (:func:`gradjax.utils.fitting.growth_rate`) at each scale.
        """
        from gradjax.boundary.scaling import chosen_kernels
        from gradjax.utils.fitting import growth_rate

        b, x, y = self.boundary, self.x, self.y
        kernels = chosen_kernels(b.params, None)
        ones = np.ones((self.size,), np.float32)
        out = []
        for s in scales:
            scaled = jax.tree.map(
                lambda v, k, s=s: np.asarray(v) * np.asarray(s, np.asarray(v).dtype) if k else v,
                b.params,
                kernels,
            )
            _, _, ge, gt = jax.device_get(self.program(scaled, b.state, self.probes, x, y, ones))
            norms = self._blocks(ge, time_chains(b.scans(x), gt))[1]
            out.append(growth_rate(norms))
        return np.asarray(out, np.float64)

    def flow(self, microbatches: int) -> Flow:
        """Measures the batch: block and parameter gradient norms, slices, residual test.

        Args:
          microbatches: the most slices of the batch (each of at least two examples) whose
            global norms are recorded.

        Returns:
          The :class:`Flow`.
        """
        b, x, y = self.boundary, self.x, self.y
        ones = np.ones((self.size,), np.float32)
        value, gp, ge, gt = jax.device_get(self.program(b.params, b.state, self.probes, x, y, ones))
        self.param_grads = gp
        k = min(microbatches, self.size // 2)  # slices of >= 2 examples (BatchNorm needs two)
        slices = layer_slices(b.params)
        grad_norms, param_norms = leaf_norms(gp, slices), leaf_norms(b.params, slices)
        order = param_order(b, slices, x)
        groups = list(dict.fromkeys(slices[i].group for i in order))
        members = [[i for i in order if slices[i].group == g] for g in groups]
        matrices = [[i for i in m if slices[i].ndim >= 2] for m in members]
        chains = time_chains(b.scans(x), gt)
        blocks, block_norms, repeat = self._blocks(ge, chains)
        return Flow(
            kind=b.kind,
            loss=float(value),
            leaf_names=tuple(slices[i].name for i in order),
            leaf_grad_norms=grad_norms[order],
            leaf_param_norms=param_norms[order],
            groups=tuple(groups),
            group_grad_norms=combine_norms(grad_norms, members),
            group_weight_grad_norms=np.array(
                [combine_norms(grad_norms, [mm])[0] if mm else math.nan for mm in matrices]
            ),
            group_has_matrices=tuple(bool(mm) for mm in matrices),
            group_param_norms=combine_norms(param_norms, members),
            block_names=blocks,
            block_grad_norms=block_norms,
            global_norm=float(combine_norms(grad_norms, [list(range(len(grad_norms)))])[0]),
            microbatch_global_norms=np.asarray(
                slice_norms(self.program, b, self.probes, x, y, k if k >= 2 else 0), np.float64
            ),
            residual=residual_test(self.program, b, self.probes, x, y),
            norms_found=b.norm_kinds(x) if b.kind != "function" else (),
            time_chains=tuple(c for c in chains if c.axis == "time"),
            blocks_repeat=repeat,
        )

    def _blocks(self, probe_grads: Any, chains: tuple[TimeChain, ...]) -> tuple:
        """Block names, ``||dL/da_l||`` and whether they are a repeated stack: the layers of
        the scanned stacks where the probes cannot reach them, else the probed blocks."""
        b, x = self.boundary, self.x
        names = b.block_names(x)
        stacks = [c for c in chains if c.axis == "layers"]
        if stacks:
            return names, np.concatenate([c.norms for c in stacks]), True
        norms = np.asarray(b.block_norms(probe_grads, x), np.float64) if self.probes else None
        return names, np.zeros((0,)) if norms is None else norms, b.blocks_repeat(x)
