"""A user's model in the sweep engine's protocol: one seed's draw, scaled along the sweep axes."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.boundary.core import Boundary
from gradjax.boundary.kinds import wrap
from gradjax.utils.errors import GradjaxInputError, first_line, invalid
from gradjax.utils.tree_paths import leaf_names, module_parts


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
      kernels: the pattern that chose the scaled kernels (``""``: every kernel).
      scaled: the paths of the kernels that the sweep scales.
    """

    model: str
    kind: str
    blocks: int
    inputs: str
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    kernels: str = ""
    scaled: tuple[str, ...] = ()


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
    _scaled: Any = None  # bools over the parameters: the kernels the sweep scales

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
        kernels = self._scaled if self._scaled is not None else _kernels(self.boundary.params)
        biases = _paired_biases(self.boundary.params, kernels)

        def one(v, noise, is_kernel, is_bias):
            if is_kernel:
                return v * jnp.asarray(sigma_w, jnp.result_type(v))
            if is_bias:
                return noise * jnp.asarray(sigma_b, jnp.result_type(v))
            return v

        return jax.tree.map(one, base["params"], base["bias_noise"], kernels, biases)


def _kernels(params: Any) -> Any:
    """Bools over ``params``: the weights and kernels (two axes or more per layer)."""
    from gradjax.utils.tree_paths import layer_slices

    leaves, treedef = jax.tree_util.tree_flatten(params)
    flags = [False] * len(leaves)
    for s in layer_slices(params):
        flags[s.index] = flags[s.index] or s.ndim >= 2
    return jax.tree_util.tree_unflatten(treedef, flags)


def _paired_biases(params: Any, chosen: Any) -> Any:
    """Bools over ``params``: each ``bias`` leaf whose module also holds a chosen ``kernel``."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(params)
    parts = [module_parts(p) for p, _ in paths]
    picked = jax.tree_util.tree_leaves(chosen)
    kernels = {q[:-1] for q, c in zip(parts, picked, strict=True) if c and q and q[-1] == "kernel"}
    flags = [bool(q) and q[-1] == "bias" and q[:-1] in kernels for q in parts]
    return jax.tree_util.tree_unflatten(treedef, flags)


def chosen_kernels(params: Any, pattern: str | None) -> Any:
    """Bools over ``params``: the kernels whose path (``"RNN_0/cell/h/kernel"``) matches
    ``pattern`` (a regular expression, searched), or every kernel for ``None``/``""``.

    Raises:
      GradjaxInputError: if the pattern is not a regular expression or matches no kernel.
    """
    kernels = _kernels(params)
    if not pattern:
        return kernels
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise invalid("kernels", pattern, f"a regular expression ({err})") from None
    paths = leaf_names(params)
    is_kernel = jax.tree_util.tree_leaves(kernels)
    flags = [k and bool(regex.search(n)) for k, n in zip(is_kernel, paths, strict=True)]
    if not any(flags):
        names = [n for n, k in zip(paths, is_kernel, strict=True) if k]
        raise invalid(
            "kernels",
            pattern,
            "a pattern matching at least one kernel path, e.g. one of " + ", ".join(names[:6]),
        )
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), flags)


def sweepable(
    model: Any,
    params: Any,
    example_input: Any,
    *,
    kernels: str | None = None,
    **wrap_kwargs: Any,
) -> Sweepable:
    """A user's model ready for :func:`gradjax.sweep` over seeds x init scale.

    Args:
      model: a Linen module, an ``nnx.Module`` (``params`` ``None``) or a pure function.
      params: the Linen variables or the function's parameters.
      example_input: a batch of inputs (for a Linen ``init`` and the block discovery).
      kernels: a regular expression: only the kernels whose path matches it are scaled by
        ``sigma_w`` (e.g. ``"cell/h"`` for the recurrent kernel of an RNN cell); default all.
      **wrap_kwargs: passed to :func:`wrap` (``apply_kwargs``, ``mutable``, ``rngs``).

    Returns:
      The :class:`Sweepable`.

    Example:
      >>> import jax, jax.numpy as jnp, gradjax as gj
      >>> from flax import linen as nn
      >>> model = nn.Sequential([nn.Dense(8), nn.tanh, nn.Dense(8), nn.tanh, nn.Dense(1)])
      >>> x = jnp.ones((4, 3)); y = jnp.zeros((4, 1))
      >>> net = gj.boundary.sweepable(model, model.init(jax.random.key(0), x), x)
      >>> probe = gj.probes.block_gradient_probe(net, (x, y), "mse")
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
    scaled = chosen_kernels(boundary.params, kernels)
    try:
        blocks = len(boundary.block_names(example_input))
    except GradjaxInputError:
        raise
    except Exception as err:  # the user's model failed on the example: its fault, named
        raise invalid(
            "model",
            str(name),
            f"a model that runs on inputs of shape {shape} (it failed with: {first_line(err)})",
        ) from None
    cfg = ModelConfig(
        model=str(name),
        kind=boundary.kind,
        blocks=blocks,
        inputs=str(shape),
        kernels=kernels or "",
        scaled=tuple(
            n
            for n, k in zip(
                leaf_names(boundary.params), jax.tree_util.tree_leaves(scaled), strict=True
            )
            if k
        ),
    )
    return Sweepable(boundary, example_input, cfg, linen_init, scaled)
