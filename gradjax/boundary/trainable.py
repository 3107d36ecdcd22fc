"""A model in the training loop's protocol: initial draws, a checked forward pass, layer norms.

gradjax's own networks take the fast path (:func:`net_trainable`: per-block records and
overflow detection inside the network); a user's model (:func:`user_trainable`) is told apart
by :func:`gradjax.boundary.kinds.model_kind`, like every other entry point's.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gradjax.boundary.kinds import DESCRIPTION, linen_module, model_kind, nnx_from_factory
from gradjax.nets import layout
from gradjax.nets.models import Net
from gradjax.utils.caching import BoundedCache
from gradjax.utils.errors import GradjaxInputError, first_line, invalid
from gradjax.utils.numerics import safe_group_norms
from gradjax.utils.tree_paths import layer_slices, natural_key


@dataclasses.dataclass(frozen=True, eq=False)
class Trainable:
    """What training needs of a model: pure functions over one parameter pytree.

    Attributes:
      kind: ``"gradjax"``, ``"linen"``, ``"nnx"`` or ``"function"``.
      init: ``init(key, hyper) -> params`` (``hyper`` may hold ``sigma_w``/``sigma_b`` for a
        gradjax net).
      forward: ``forward(params, x) -> (output, finite)``; ``finite`` is False where a value
        inside the model is not finite (gradjax nets: every pre-activation and block output;
        other models: the output).
      norms: ``norms(tree) -> (layers,)``, the per-layer weight norms of a parameter or
        gradient pytree.
      layers: the layer names, in the order of ``norms``.
      dtype: the output dtype.
      describe: a JSON-ready description for the run's metadata.
    """

    kind: str
    init: Callable[[jax.Array, Mapping[str, jax.Array]], Any]
    forward: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]
    norms: Callable[[Any], jax.Array]
    layers: tuple[str, ...]
    dtype: Any
    describe: dict = dataclasses.field(default_factory=dict)
    param_bytes: int = 0
    weight_entries: int = 0


@functools.lru_cache(maxsize=64)
def net_trainable(net: Net) -> Trainable:
    """The fast path for gradjax's own networks (one per net, so compiled programs are reused)."""

    def init(key, hyper):
        base = net.init_base(key)
        return net.scale(base, sigma_w=hyper.get("sigma_w"), sigma_b=hyper.get("sigma_b"))

    def forward(params, x):
        # An overflow inside the network can leave the loss finite (ReLU maps -inf to 0, tanh
        # maps inf to 1) while every gradient upstream of it is an exact, meaningless 0; a
        # non-finite pre-activation or block output is a non-finite step.
        trace = net.forward(params, x)
        finite = jnp.all(jnp.isfinite(trace.preact)) & jnp.all(jnp.isfinite(trace.act))
        return trace.output, finite

    describe = {
        k: (v if isinstance(v, (int, float, str, type(None))) else repr(v))
        for k, v in vars(net.cfg).items()
    }
    return Trainable(
        kind="gradjax",
        init=init,
        forward=forward,
        norms=layout.layer_norms,
        layers=tuple(f"block {i + 1}" for i in range(net.cfg.depth)),
        dtype=net.dtype,
        describe=describe,
    )


# User models by identity and example input shape: the same model object gets the same
# Trainable, so a repeated call reuses its compiled programs (the entry keeps the object alive).
_USER_MODELS = BoundedCache(16)


def user_trainable(model: Any, example: jax.Array) -> Trainable:
    """A user's Linen / NNX model or pure function pair as a :class:`Trainable` (cached)."""
    cache_key = (id(model), tuple(example.shape), str(example.dtype))
    hit = _USER_MODELS.get(cache_key)
    if hit is not None and hit[0] is model:
        return hit[1]
    from flax import nnx

    name = type(model).__name__
    kind = model_kind(model)
    if kind == "linen":
        module = linen_module(model)
        describe = {"class": type(module).__name__}
        shapes = jax.eval_shape(module.init, jax.random.key(0), example)
        others = sorted(c for c in shapes if c != "params")
        if others:
            raise invalid(
                "model",
                name,
                "a Linen module whose variables are only 'params' (it also has "
                f"{', '.join(others)}; wrap its apply with mutable collections into a pure "
                "(init_fn, apply_fn) pair)",
            )
        init_fn = lambda key: module.init(key, example)["params"]
        apply_fn = lambda params, x: module.apply({"params": params}, x)
    elif kind in ("nnx", "nnx_factory"):
        if kind == "nnx":
            # A module instance has one draw: every seed starts from its parameters.
            describe = {"class": name, "initial_params": "the module's own"}
            graphdef, start, rest = nnx.split(model, nnx.Param, ...)
            init_fn = lambda key: start
        else:
            abstract = nnx.eval_shape(lambda: nnx_from_factory(model, 0))
            factory = getattr(model, "__name__", name)
            describe = {"class": type(abstract).__name__, "factory": factory}
            graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
            init_fn = lambda key: nnx.split(nnx_from_factory(model, key), nnx.Param, ...)[1]
        kind = "nnx"
        if jax.tree.leaves(rest):
            raise invalid(
                "model",
                name,
                "an nnx.Module whose state is only nnx.Param (BatchNorm statistics and Dropout "
                "RNG streams are not trained by gradjax.train; wrap the model into a pure "
                "(init_fn, apply_fn) pair)",
            )
        apply_fn = lambda params, x: nnx.merge(graphdef, params)(x)
    else:  # "pair" ("function" needs parameters, which training draws itself)
        kind, describe = "function", {"init": getattr(model[0], "__name__", "init_fn")}
        init_fn, apply_fn = model

    try:
        params = jax.eval_shape(init_fn, jax.random.key(0))
        out = jax.eval_shape(apply_fn, params, example)
    except GradjaxInputError:
        raise
    except Exception as err:  # the user's code failed on the data's input shape
        raise invalid(
            "model",
            name,
            f"{DESCRIPTION} that maps inputs of shape {tuple(example.shape)} to outputs "
            f"({type(err).__name__}: {first_line(err)})",
        ) from None
    shapes = jax.tree.leaves(params)
    slices = [s for s in layer_slices(params) if s.ndim >= 2]
    groups = sorted({s.group for s in slices}, key=natural_key)
    if not groups:
        raise invalid("model", name, f"{DESCRIPTION} with at least one weight matrix")
    members = {g: [(s.index, s.layer) for s in slices if s.group == g] for g in groups}

    def norms(tree):
        leaves = jax.tree.leaves(tree)
        pick = lambda i, layer: leaves[i] if layer is None else leaves[i][layer]
        rows = [[pick(i, layer)[None] for i, layer in members[g]] for g in groups]
        return jnp.stack([n[0] for n in safe_group_norms(rows)])

    def forward(params, x):
        output = apply_fn(params, x)
        return output, jnp.all(jnp.isfinite(output))

    adapter = Trainable(
        kind=kind,
        init=lambda key, hyper: init_fn(key),
        forward=forward,
        norms=norms,
        layers=tuple(groups),
        dtype=out.dtype,
        describe={"kind": kind, **describe, "output_shape": list(out.shape)},
        param_bytes=sum(leaf.size * leaf.dtype.itemsize for leaf in shapes),
        weight_entries=sum(
            math.prod(shapes[s.index].shape[0 if s.layer is None else 1 :]) for s in slices
        ),
    )
    _USER_MODELS[cache_key] = (model, adapter)
    return adapter
