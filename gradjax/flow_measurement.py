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

import math
from collections.abc import Callable, Hashable
from typing import Any

import jax
import numpy as np

from gradjax.boundary import Boundary, first_use
from gradjax.errors import GradjaxInputError, invalid
from gradjax.tree_paths import layer_slices, module_parts, natural_key

# Compiled measuring programs by (model structure, shapes, loss, options); bounded.
_PROGRAMS: dict[Hashable, Callable[..., Any]] = {}
_MAX_PROGRAMS = 32
# Whether a model's blocks are residual, and its output shapes, by (structure, shapes).
_RESIDUAL: dict[Hashable, bool | None] = {}
_OUTPUTS: dict[Hashable, Any] = {}

__all__ = [
    "check_params_finite",
    "combine_norms",
    "gradient_program",
    "leaf_norms",
    "output_shape",
    "param_order",
    "residual_test",
    "slice_norms",
]


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


def gradient_program(
    boundary: Boundary, loss: Callable[..., Any], x: Any, y: Any, probes: Any
) -> Callable[..., Any]:
    """The one jitted program of a diagnosis, cached by structure, shapes and loss.

    ``program(params, state, probes, x, y, weights)`` pulls ``weights[i] * dL/dout_i`` back
    through the model: with all weights 1 it is the full-batch gradient (and ``dL/da_l`` for
    every block); with the indicator of a slice of examples it is that slice's share of it.
    One compiled program serves the full batch and every slice.
    """
    key = (boundary.cache_key(x, y, probes), loss if _is_hashable(loss) else id(loss))
    if key in _PROGRAMS:
        return _PROGRAMS[key]

    def measure(p, state, e, x, y, weights):
        out, pullback = jax.vjp(lambda p, e: boundary.apply(p, x, e, state=state), p, e)
        value, cot = jax.value_and_grad(lambda o: loss(o, y))(out)
        cot = jax.tree.map(
            lambda c: c * weights.reshape((-1,) + (1,) * (c.ndim - 1)).astype(c.dtype), cot
        )
        gp, ge = pullback(cot)
        # Norms are taken on the host (float64): the program is the gradient and no more.
        return value, gp, ge

    program = jax.jit(measure)
    if len(_PROGRAMS) >= _MAX_PROGRAMS:
        _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[key] = program
    return program


def output_shape(boundary: Boundary, x: Any, probes: Any) -> Any:
    """The model's output shapes (traced once per structure and shapes)."""
    key = boundary.cache_key(x, probes)
    if key not in _OUTPUTS:
        if len(_OUTPUTS) >= _MAX_PROGRAMS:
            _OUTPUTS.pop(next(iter(_OUTPUTS)))
        _OUTPUTS[key] = jax.eval_shape(
            lambda p, e: boundary.apply(p, x, e), boundary.params, probes
        )
    return _OUTPUTS[key]


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
    """Whether the first block's output reaches the loss with every kernel inside the blocks
    set to zero: only a skip connection carries it then.

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
    first = blocks[0]
    mask = _kernel_mask(boundary, x)
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
    if len(_RESIDUAL) >= _MAX_PROGRAMS:
        _RESIDUAL.pop(next(iter(_RESIDUAL)))
    _RESIDUAL[key] = result
    return result


def _is_hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True
