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

from gradjax.boundary.function import first_use
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
      forward: ``forward(params, state, x, key, train) -> (output, finite, new_state)``;
        ``finite`` is False where a value inside the model is not finite (gradjax nets: every
        pre-activation and block output; other models: the output). ``state`` is the
        model's non-parameter state (BatchNorm statistics, NNX RNG streams; ``()`` for none),
        updated in training mode; ``key`` draws the step's dropout masks.
      init_state: ``init_state(key) -> state`` for one seed.
      norms: ``norms(tree) -> (layers,)``, the per-layer weight norms of a parameter or
        gradient pytree.
      layers: the layer names, in the order of ``norms``.
      dtype: the output dtype.
      describe: a JSON-ready description for the run's metadata.
    """

    kind: str
    init: Callable[[jax.Array, Mapping[str, jax.Array]], Any]
    forward: Callable[..., tuple[jax.Array, jax.Array, Any]]
    norms: Callable[[Any], jax.Array]
    layers: tuple[str, ...]
    dtype: Any
    describe: dict = dataclasses.field(default_factory=dict)
    param_bytes: int = 0
    weight_entries: int = 0
    init_state: Callable[[jax.Array], Any] = lambda key: ()


@functools.lru_cache(maxsize=64)
def net_trainable(net: Net) -> Trainable:
    """The fast path for gradjax's own networks (one per net, so compiled programs are reused)."""

    def init(key, hyper):
        base = net.init_base(key)
        return net.scale(base, sigma_w=hyper.get("sigma_w"), sigma_b=hyper.get("sigma_b"))

    def forward(params, state, x, key=None, train=True):
        # An overflow inside the network can leave the loss finite (ReLU maps -inf to 0, tanh
        # maps inf to 1) while every gradient upstream of it is an exact, meaningless 0; a
        # non-finite pre-activation or block output is a non-finite step.
        trace = net.forward(params, x)
        finite = jnp.all(jnp.isfinite(trace.preact)) & jnp.all(jnp.isfinite(trace.act))
        return trace.output, finite, state

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

    name = type(model).__name__
    kind = model_kind(model)
    init_state = lambda key: ()
    if kind == "linen":
        module = linen_module(model)
        describe = {"class": type(module).__name__}
        init_fn, init_state, apply_fn = _linen_functions(module, example)
    elif kind in ("nnx", "nnx_factory"):
        describe, init_fn, init_state, apply_fn = _nnx_functions(model, kind, name)
        kind = "nnx"
    else:  # "pair" ("function" needs parameters, which training draws itself)
        kind, describe = "function", {"init": getattr(model[0], "__name__", "init_fn")}
        init_fn, pure_apply = model
        apply_fn = lambda params, state, x, key, train: (pure_apply(params, x), state)

    try:
        params = jax.eval_shape(init_fn, jax.random.key(0))
        state0 = jax.eval_shape(init_state, jax.random.key(0))
        out, _ = jax.eval_shape(
            lambda p, s: apply_fn(p, s, example, jax.random.key(0), True), params, state0
        )
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
    # Layers in execution order: the first equation of the traced forward pass reading each.
    uses = first_use(
        lambda ps: apply_fn(ps[0], ps[1], example, jax.random.key(0), False), (params, state0)
    )
    first = {}
    for sl in slices:
        first[sl.group] = min(first.get(sl.group, (math.inf, 0)), (uses[sl.index], sl.layer or 0))
    groups = sorted(first, key=lambda g: (first[g], natural_key(g)))
    if not groups:
        raise invalid("model", name, f"{DESCRIPTION} with at least one weight matrix")
    members = {g: [(s.index, s.layer) for s in slices if s.group == g] for g in groups}

    def norms(tree):
        leaves = jax.tree.leaves(tree)
        pick = lambda i, layer: leaves[i] if layer is None else leaves[i][layer]
        rows = [[pick(i, layer)[None] for i, layer in members[g]] for g in groups]
        return jnp.stack([n[0] for n in safe_group_norms(rows)])

    def forward(params, state, x, key=None, train=True):
        key = jax.random.key(0) if key is None else key
        output, new_state = apply_fn(params, state, x, key, train)
        return output, jnp.all(jnp.isfinite(output)), new_state

    adapter = Trainable(
        kind=kind,
        init=lambda key, hyper: init_fn(key),
        init_state=init_state,
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


# Call keywords that switch a Linen module between training and evaluation: name -> value
# in training (its negation in evaluation).
_TRAIN_FLAGS = {"train": True, "training": True, "is_training": True, "deterministic": False,
                "use_running_average": False}  # fmt: skip


def _linen_functions(module: Any, example: jax.Array) -> tuple:
    """``init(key)``, ``init_state(key)`` and ``apply(params, state, x, key, train)`` of a
    Linen module: every collection but ``params`` is state, updated in training mode;
    dropout draws from the step's key; a ``train``-like keyword of ``__call__`` switches
    modes."""
    import inspect

    call = inspect.signature(type(module).__call__).parameters
    flags = {k: v for k, v in _TRAIN_FLAGS.items() if k in call}

    def variables(key):
        return module.init({"params": key, "dropout": jax.random.fold_in(key, 1)}, example)

    def init_state(key):
        return {k: v for k, v in variables(key).items() if k != "params"}

    def apply(params, state, x, key, train):
        mode = {k: v if train else not v for k, v in flags.items()}
        out, new = module.apply(
            {"params": params, **state}, x, rngs={"dropout": key}, mutable=list(state), **mode
        )
        # Evaluation reads the running statistics and leaves them as they are.
        return out, ({**state, **new} if train else state)

    return (lambda key: variables(key)["params"]), init_state, apply


def _nnx_functions(model: Any, kind: str, name: str) -> tuple:
    """``describe``, ``init(key)``, ``init_state(key)`` and ``apply(params, state, x, key,
    train)`` of an NNX module or factory: everything but ``nnx.Param`` is state (BatchNorm
    statistics, RNG streams); each seed's RNG keys come from its own key."""
    from flax import nnx

    if kind == "nnx":
        # A module instance has one draw: every seed starts from its parameters.
        describe = {"class": name, "initial_params": "the module's own"}
        graphdef, start, rest = nnx.split(model, nnx.Param, ...)
        init_fn = lambda key: start
        own_state = lambda key: rest
    else:
        abstract = nnx.eval_shape(lambda: nnx_from_factory(model, 0))
        factory = getattr(model, "__name__", name)
        describe = {"class": type(abstract).__name__, "factory": factory}
        graphdef = nnx.split(abstract, nnx.Param, ...)[0]
        init_fn = lambda key: nnx.split(nnx_from_factory(model, key), nnx.Param, ...)[1]
        own_state = lambda key: nnx.split(nnx_from_factory(model, key), nnx.Param, ...)[2]

    def init_state(key):
        # Each seed's dropout streams start from its own key (an instance's would be shared);
        # a stack built with nnx.vmap holds one key per layer: each gets its own.
        leaves, treedef = jax.tree_util.tree_flatten(own_state(key))
        fresh = [
            _fresh_keys(jax.random.fold_in(key, 2 + i), v.shape)
            if jnp.issubdtype(getattr(v, "dtype", None), jax.dtypes.prng_key)
            else v
            for i, v in enumerate(leaves)
        ]
        return jax.tree_util.tree_unflatten(treedef, fresh)

    def apply(params, state, x, key, train):
        del key  # NNX draws dropout masks from the RNG streams in its state
        # Variables rebuilt inside the current trace, so BatchNorm statistics and RNG counts
        # can be updated by the forward pass.
        module = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, state))
        if train:
            module.train()
        else:
            module.eval()
        out = module(x)
        return out, (nnx.split(module, nnx.Param, ...)[2] if train else state)

    return describe, init_fn, init_state, apply


def _fresh_keys(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``key`` itself for a scalar key leaf, else independent keys of ``shape`` from it."""
    if not shape:
        return key
    return jax.random.split(key, math.prod(shape)).reshape(shape)
