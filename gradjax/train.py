"""Training with Optax mitigation chains, vmapped over seeds and numeric hyper-parameters.

One run is a pure ``lax.scan`` of :func:`train_step` over steps; :func:`train` vmaps it over
seeds and over a zipped list of hyper-parameter values (the learning rate, clipping norm,
warm-up length, penalties, or the initial weight scale ``sigma_w``), so a whole experiment is
one compiled call. Every step records the loss, per-layer gradient norms, per-layer weight
norms (both overflow-safe, :mod:`gradjax.numerics`), the update norm and the learning rate.
The model is one of gradjax's networks (the fast path: blocks read through
:mod:`gradjax.layout`) or a user's Flax Linen module, NNX module or pure ``(init_fn,
apply_fn)`` pair, whose records are one per module holding a weight matrix (see :func:`train`).
:func:`check_fits` sizes a call before it runs, and :func:`check_output_dir` keeps a run from
overwriting other results.

A run that produces a non-finite block output, loss, gradient, update or weight is *diverged*
from that step on: its parameters are frozen at the last finite values,
:attr:`TrainHistory.first_nonfinite` records the step, :attr:`TrainHistory.alive` is False
from there, and the recorded values of that step and later ones are NaN (missing), never the
exact zeros that an overflow leaves in the gradients upstream of it, so NaN-aware statistics
over seeds (:func:`seed_quantiles`) summarise the runs that are still alive without the
diverged ones polluting them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradjax import devices as devices_lib
from gradjax import io, layout
from gradjax.config import TrainConfig
from gradjax.data import Dataset
from gradjax.errors import GradjaxInputError, check_key, check_real, invalid
from gradjax.gradients import get_loss
from gradjax.models import Net, Params
from gradjax.numerics import safe_group_norms, safe_norm
from gradjax.optim import (
    HYPERPARAMS,
    chain_from_config,
    get_hyperparams,
    set_hyperparams,
    warmup_cosine,
)
from gradjax.results import pytree_dataclass, static_field
from gradjax.tree_paths import layer_slices, natural_key, path_name

# Hyper-parameters that set the initial parameters rather than the optimiser.
INIT_HYPERPARAMS = ("sigma_w", "sigma_b")
TRAIN_HYPERPARAMS = (*HYPERPARAMS, *INIT_HYPERPARAMS)


@pytree_dataclass
class TrainState:
    """The carry of one run.

    Attributes:
      params: the network parameters (frozen at the last finite values once diverged).
      opt_state: the mitigation chain's state.
      alive: False from the first step with a non-finite value on.
      first_nonfinite: that step's index, or -1 while alive.
      step: the number of steps taken.
    """

    params: Params
    opt_state: Any
    alive: jax.Array
    first_nonfinite: jax.Array
    step: jax.Array


@pytree_dataclass
class StepRecord:
    """What one step records (NaN once the run has diverged).

    Attributes:
      loss: the minibatch loss before the update.
      grad_norms: ``||dL/dW_l||`` of the raw gradient (before clipping), ``(depth,)``.
      weight_norms: ``||W_l||`` after the update, ``(depth,)``.
      update_norm: global norm of the applied update.
      learning_rate: the scheduled learning rate of this step.
      alive: whether the run was still finite after this step.
    """

    loss: jax.Array
    grad_norms: jax.Array
    weight_norms: jax.Array
    update_norm: jax.Array
    learning_rate: jax.Array
    alive: jax.Array


@pytree_dataclass
class Evaluation:
    """Loss and accuracy of a classifier on a data split."""

    loss: jax.Array
    accuracy: jax.Array


@pytree_dataclass
class TrainHistory:
    """Per-step records and final evaluation of runs (leading axes: those of the runs).

    Attributes:
      loss: ``(..., steps)`` minibatch loss.
      grad_norms: ``(..., steps, depth)`` raw per-layer weight-gradient norms.
      weight_norms: ``(..., steps, depth)`` per-layer weight norms after each step.
      update_norm: ``(..., steps)`` global norm of each update.
      learning_rate: ``(..., steps)`` scheduled learning rate.
      alive: ``(..., steps)`` False from the first non-finite step on.
      first_nonfinite: ``(...)`` that step, or -1 if the run stayed finite.
      initial_weight_norms: ``(..., depth)`` per-layer weight norms at initialisation.
      train: final :class:`Evaluation` on the whole training split.
      test: final :class:`Evaluation` on the test split.
    """

    loss: jax.Array
    grad_norms: jax.Array
    weight_norms: jax.Array
    update_norm: jax.Array
    learning_rate: jax.Array
    alive: jax.Array
    first_nonfinite: jax.Array
    initial_weight_norms: jax.Array
    train: Evaluation
    test: Evaluation


@pytree_dataclass
class TrainResult:
    """:func:`train`'s output: histories with axes ``("hyper", "seed", ...)``.

    Attributes:
      history: a :class:`TrainHistory` whose arrays lead with ``(n_hyper, seeds)``.
      hyper: the hyper-parameter values of each entry of the ``hyper`` axis (name ->
        ``(n_hyper,)``); empty when none were varied (``n_hyper = 1``).
      layers: the name of each entry of the per-layer records (``grad_norms``' last axis).
      axes: ``("hyper", "seed")``.
      meta: JSON-safe description (configs, data set, seeds, key).
    """

    history: TrainHistory
    hyper: dict[str, jax.Array]
    layers: tuple[str, ...] = static_field(default=())
    axes: tuple[str, ...] = static_field(default=("hyper", "seed"))
    meta: str = static_field(default="{}")

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``history.npz`` (flat arrays, no pickle) and ``meta.json``; returns the dir.

        Both files are written atomically (:func:`gradjax.io.atomic_write`): a reader or an
        interrupted run never sees a half-written file.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        flat = {
            path_name(path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(self.history)[0]
        }
        flat.update({f"hyper/{k}": np.asarray(v) for k, v in self.hyper.items()})
        io.atomic_savez(out / "history.npz", flat)
        meta = json.loads(self.meta)
        meta["axes"] = list(self.axes)
        io.atomic_write_json(out / "meta.json", meta)
        return out


# ---------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True, eq=False)
class _Model:
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
def _net_model(net: Net) -> _Model:
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
    return _Model(
        kind="gradjax",
        init=init,
        forward=forward,
        norms=layout.layer_norms,
        layers=tuple(f"block {i + 1}" for i in range(net.cfg.depth)),
        dtype=net.dtype,
        describe=describe,
    )


# User models by identity and example input shape: the same model object gets the same
# _Model, so a repeated call reuses its compiled programs (the entry keeps the object alive).
_USER_MODELS: dict[tuple, tuple[Any, _Model]] = {}

MODEL_KINDS = (
    "a gradjax Net, a Flax Linen module, an nnx.Module, a factory rngs -> nnx.Module, or a "
    "pure (init_fn(key) -> params, apply_fn(params, x) -> y) pair"
)


def _user_model(model: Any, example: jax.Array) -> _Model:
    """A user's Linen / NNX model or pure function pair as a :class:`_Model` (cached)."""
    cache_key = (id(model), tuple(example.shape), str(example.dtype))
    hit = _USER_MODELS.get(cache_key)
    if hit is not None and hit[0] is model:
        return hit[1]
    import flax.linen as nn
    from flax import nnx

    name = type(model).__name__
    if isinstance(model, nn.Module):
        kind, describe = "linen", {"class": name}
        shapes = jax.eval_shape(model.init, jax.random.key(0), example)
        others = sorted(c for c in shapes if c != "params")
        if others:
            raise invalid(
                "model",
                name,
                "a Linen module whose variables are only 'params' (it also has "
                f"{', '.join(others)}; wrap its apply with mutable collections into a pure "
                "(init_fn, apply_fn) pair)",
            )
        init_fn = lambda key: model.init(key, example)["params"]
        apply_fn = lambda params, x: model.apply({"params": params}, x)
    elif isinstance(model, nnx.Module) or (callable(model) and not isinstance(model, tuple)):
        if isinstance(model, nnx.Module):
            # A module instance has one draw: every seed starts from its parameters.
            kind, describe = "nnx", {"class": name, "initial_params": "the module's own"}
            graphdef, start, rest = nnx.split(model, nnx.Param, ...)
            init_fn = lambda key: start
        else:
            kind = "nnx"
            abstract = nnx.eval_shape(lambda: model(rngs=nnx.Rngs(0)))
            if not isinstance(abstract, nnx.Module):
                raise invalid("model", name, MODEL_KINDS)
            factory = getattr(model, "__name__", name)
            describe = {"class": type(abstract).__name__, "factory": factory}
            graphdef, _, rest = nnx.split(abstract, nnx.Param, ...)
            init_fn = lambda key: nnx.split(model(rngs=nnx.Rngs(key)), nnx.Param, ...)[1]
        if jax.tree.leaves(rest):
            raise invalid(
                "model",
                name,
                "an nnx.Module whose state is only nnx.Param (BatchNorm statistics and Dropout "
                "RNG streams are not trained by gradjax.train; wrap the model into a pure "
                "(init_fn, apply_fn) pair)",
            )
        apply_fn = lambda params, x: nnx.merge(graphdef, params)(x)
    elif isinstance(model, (tuple, list)) and len(model) == 2 and all(callable(f) for f in model):
        kind, describe = "function", {"init": getattr(model[0], "__name__", "init_fn")}
        init_fn, apply_fn = model
    else:
        raise invalid("model", name, MODEL_KINDS)

    try:
        params = jax.eval_shape(init_fn, jax.random.key(0))
        out = jax.eval_shape(apply_fn, params, example)
    except GradjaxInputError:
        raise
    except Exception as err:  # the user's code failed on the data's input shape
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise invalid(
            "model",
            name,
            f"{MODEL_KINDS} that maps inputs of shape {tuple(example.shape)} to outputs "
            f"({type(err).__name__}: {first})",
        ) from None
    shapes = jax.tree.leaves(params)
    slices = [s for s in layer_slices(params) if s.ndim >= 2]
    groups = sorted({s.group for s in slices}, key=natural_key)
    if not groups:
        raise invalid("model", name, f"{MODEL_KINDS} with at least one weight matrix")
    members = {g: [(s.index, s.layer) for s in slices if s.group == g] for g in groups}

    def norms(tree):
        leaves = jax.tree.leaves(tree)
        pick = lambda i, layer: leaves[i] if layer is None else leaves[i][layer]
        rows = [[pick(i, layer)[None] for i, layer in members[g]] for g in groups]
        return jnp.stack([n[0] for n in safe_group_norms(rows)])

    def forward(params, x):
        output = apply_fn(params, x)
        return output, jnp.all(jnp.isfinite(output))

    adapter = _Model(
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


# ---------------------------------------------------------------------- one step


def _all_finite(tree: Any) -> jax.Array:
    """Whether every entry of every leaf of ``tree`` is finite (one boolean)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def train_step(
    net: Net,
    tx: optax.GradientTransformation,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array],
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
) -> tuple[TrainState, StepRecord]:
    """One optimisation step of a gradjax net with a :func:`~gradjax.optim.mitigation_chain`.

    Pure: jit it with ``net``, ``tx`` and ``loss`` closed over (they are static). A step that
    makes anything non-finite (a pre-activation or block output included) leaves the
    parameters and optimiser state unchanged and marks the run diverged; a diverged run stays
    frozen.

    Args:
      net: the network.
      tx: a :func:`~gradjax.optim.mitigation_chain` (its hyper-parameters are read back for
        the recorded learning rate).
      loss: ``"xent"``, ``"mse"`` or ``loss(output, target) -> scalar``.
      state: the run's :class:`TrainState`.
      x: the minibatch inputs, ``(batch, input_dim)``.
      y: its targets.

    Returns:
      ``(new_state, record)``.
    """
    return _step(_net_model(net), tx, loss, state, x, y)


def _step(
    model: _Model,
    tx: optax.GradientTransformation,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array],
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
) -> tuple[TrainState, StepRecord]:
    """:func:`train_step` of any :class:`_Model`."""
    loss_fn = get_loss(loss)
    params = state.params

    def loss_and_forward_finite(p):
        output, forward_finite = model.forward(p, x)
        return loss_fn(output, y), forward_finite

    (value, forward_finite), grads = jax.value_and_grad(loss_and_forward_finite, has_aux=True)(
        params
    )
    updates, opt_state = tx.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    grad_norms = model.norms(grads)
    update_norm = safe_norm(jnp.stack([safe_norm(u) for u in jax.tree.leaves(updates)]))
    weight_norms = model.norms(new_params)
    finite = (
        jnp.isfinite(value)
        & forward_finite
        & _all_finite(grads)
        & jnp.isfinite(update_norm)
        & _all_finite(new_params)
    )
    ok = state.alive & finite
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
    hp = get_hyperparams(opt_state)
    lr = warmup_cosine(
        state.step,
        peak_value=hp["learning_rate"],
        warmup_steps=hp["warmup_steps"],
        total_steps=hp["total_steps"],
        end_value=hp["learning_rate"] * hp["end_lr_fraction"],
    )
    nan = jnp.asarray(jnp.nan, value.dtype)
    mask = lambda v: jnp.where(ok, v, nan)
    record = StepRecord(
        loss=mask(value),
        grad_norms=mask(grad_norms),
        weight_norms=mask(weight_norms),
        update_norm=mask(update_norm),
        learning_rate=lr,
        alive=ok,
    )
    first = jnp.where(state.alive & ~finite, state.step.astype(jnp.int32), state.first_nonfinite)
    new_state = TrainState(
        params=keep(new_params, params),
        opt_state=keep(opt_state, state.opt_state),
        alive=ok,
        first_nonfinite=first,
        step=state.step + 1,
    )
    return new_state, record


def evaluate(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | Callable = "xent"
) -> Evaluation:
    """Loss and arg-max accuracy of ``net`` on ``(x, y)`` (integer labels).

    Args:
      net: the network.
      params: its parameters.
      x: inputs, ``(n, input_dim)``.
      y: integer labels, ``(n,)`` (one-hot encoded for ``"mse"``).
      loss: the loss name or callable.

    Returns:
      An :class:`Evaluation`; accuracy is 0 where the outputs are not finite.
    """
    return _evaluate(net.apply(params, x), y, loss)


def _evaluate(out: jax.Array, y: jax.Array, loss: str | Callable) -> Evaluation:
    acc = jnp.mean((jnp.argmax(out, axis=-1) == y) & jnp.all(jnp.isfinite(out), axis=-1))
    # mse is scored against one-hot targets; other losses take the integer labels.
    target = jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype) if loss == "mse" else y
    return Evaluation(loss=get_loss(loss)(out, target), accuracy=acc.astype(out.dtype))


# ---------------------------------------------------------------------- many runs


def _batch_indices(key: jax.Array, n: int, steps: int, batch: int | None) -> jax.Array:
    """Minibatch indices for every step: consecutive shuffles of the training set."""
    if batch is None or batch >= n:
        return jnp.broadcast_to(jnp.arange(n), (steps, n))
    epochs = math.ceil(steps * batch / n)
    perms = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, epochs))
    return perms.reshape(-1)[: steps * batch].reshape(steps, batch)


def _targets(data: Dataset, loss: str, y: jax.Array, dtype: Any) -> jax.Array:
    # mse trains on one-hot targets; xent on the integer labels.
    return jax.nn.one_hot(y, data.num_classes, dtype=dtype) if loss == "mse" else y


def _chain_overrides(tcfg: TrainConfig, names: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    # A mitigation varied per run must be in the chain even where the config leaves it off.
    over = {}
    if "clip" in names and tcfg.clip is None:
        over["clip"] = math.inf
    if "weight_decay" in names:
        over["weight_decay"] = tcfg.weight_decay
    if "l1" in names:
        over["l1"] = tcfg.l1
    if "decoupled_weight_decay" in names:
        over["decoupled_weight_decay"] = 0.0
    return tuple(sorted(over.items()))


@functools.lru_cache(maxsize=64)
def _compiled(
    model: _Model,
    tcfg: TrainConfig,
    overrides: tuple[tuple[str, Any], ...],
    names: tuple[str, ...],
    with_params: bool,
    devices: tuple = (),
) -> tuple[Callable, Callable, Callable]:
    """The jitted init / segment / evaluation functions of one experiment shape (cached).

    With several ``devices`` the segment function is a ``shard_map`` over their seed axis.
    """
    # The step measures its own per-layer norms (model.norms), so the chain records none.
    tx = chain_from_config(tcfg, **dict(overrides), record_norms=False)

    def init_one(key, hyper, params0):
        k_init = jax.random.fold_in(key, 0)
        if with_params:
            params = params0
        else:
            params = model.init(k_init, hyper)
        opt_state = tx.init(params)
        opt_hyper = {k: v for k, v in hyper.items() if k not in INIT_HYPERPARAMS}
        opt_state = set_hyperparams(opt_state, **opt_hyper)
        state = TrainState(
            params=params,
            opt_state=opt_state,
            alive=jnp.ones((), bool),
            first_nonfinite=jnp.full((), -1, jnp.int32),
            step=jnp.zeros((), jnp.int32),
        )
        return state, model.norms(params)

    def segment_one(state, indices, data):
        def body(carry, idx):
            x = data.x_train[idx]
            y = _targets(data, tcfg.loss, data.y_train[idx], model.dtype)
            return _step(model, tx, tcfg.loss, carry, x, y)

        return jax.lax.scan(body, state, indices)

    def eval_one(params, data):
        ev = lambda x, y: _evaluate(model.forward(params, x)[0], y, tcfg.loss)
        return ev(data.x_train, data.y_train), ev(data.x_test, data.y_test)

    # Axes: hyper (H) outer, seed (S) inner. Keys and minibatch order are shared across the
    # hyper axis (common random numbers: differences between hyper-parameters are not seed
    # noise).
    def init_all(keys, hyper, params0, data):
        p_axis = 0 if with_params else None
        per_seed = jax.vmap(init_one, in_axes=(0, None, p_axis))
        if hyper:
            n_hyper = jax.tree.leaves(hyper)[0].shape[0]
        elif with_params:
            n_hyper = jax.tree.leaves(params0)[0].shape[0]
        else:
            n_hyper = 1
        state, norms = jax.vmap(per_seed, in_axes=(None, 0, p_axis), axis_size=n_hyper)(
            keys, hyper, params0
        )
        # The minibatch order depends on the seed only (shared across the hyper axis).
        batch_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
        n = data.x_train.shape[0]
        indices = jax.vmap(lambda k: _batch_indices(k, n, tcfg.steps, tcfg.batch_size))(batch_keys)
        return state, norms, indices

    segment_all = jax.vmap(jax.vmap(segment_one, in_axes=(0, 0, None)), in_axes=(0, None, None))
    if len(devices) > 1:
        from jax.sharding import PartitionSpec as P

        # Every state and record leaf leads with (hyper, seed); indices with (seed,); the data
        # is replicated. Each device runs the unsharded program on its seeds.
        segment_all = devices_lib.shard_map(
            segment_all,
            devices,
            in_specs=(P(None, "seed"), P("seed"), P()),
            out_specs=P(None, "seed"),
        )
    eval_all = jax.vmap(jax.vmap(eval_one, in_axes=(0, None)), in_axes=(0, None))
    return (
        jax.jit(init_all),
        jax.jit(segment_all),
        jax.jit(eval_all),
    )


def _seed_devices(devices: Any, seeds: int) -> tuple:
    """The devices the seed axis is split over: as many as divide ``seeds``.

    Training is a pure XLA program, so a single-process run uses every device, CPU devices
    included; across processes the inputs live on one host, so the default is one device.
    """
    one_process = jax.process_count() == 1
    default = devices_lib.default_devices(cpu_all=True) if one_process else jax.devices()[:1]
    chosen = devices_lib.select_devices(devices, default=default)
    n = max(k for k in range(1, len(chosen) + 1) if seeds % k == 0)
    return chosen[:n]


def _check_hyper(
    hyper: Mapping[str, Any] | None, tcfg: TrainConfig
) -> tuple[dict[str, np.ndarray], int]:
    """Validates per-run hyper-parameter values; returns them as arrays and their count.

    Each value must be one that :class:`~gradjax.config.TrainConfig` accepts for its field
    (the config is the one place that knows the allowed ranges), with two additions that only
    a per-run axis has: ``clip = inf`` (the run is not clipped) and ``total_steps``.
    """
    if not hyper:
        return {}, 1
    if not isinstance(hyper, Mapping):
        raise invalid("hyper", hyper, "a dict of name -> list of values")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    out, sizes = {}, set()
    for name, values in hyper.items():
        if name not in TRAIN_HYPERPARAMS:
            raise invalid("hyper", name, "names from " + ", ".join(TRAIN_HYPERPARAMS))
        field = f"hyper[{name!r}]"
        try:
            arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
        except (TypeError, ValueError):
            raise invalid(field, values, "a non-empty 1-D list of numbers") from None
        if arr.ndim != 1 or arr.size == 0:
            raise invalid(field, values, "a non-empty 1-D list of numbers")
        for v in arr.tolist():
            if name == "clip" and v == math.inf:
                continue  # present in the chain but off
            if name in fields:
                # Integer fields (warmup_steps) take integral values only.
                is_int = fields[name].type in ("int", int)
                value = int(v) if is_int and math.isfinite(v) and v == int(v) else v
                try:
                    tcfg.replace(**{name: value})
                except GradjaxInputError as err:
                    raise GradjaxInputError(f"{field}: {err}") from None
            elif name == "total_steps":
                check_real(field, v, minimum=1.0)
            else:  # sigma_w, sigma_b: scales of the initial draw
                check_real(field, v, minimum=0.0)
        out[name] = arr
        sizes.add(arr.size)
    if len(sizes) != 1:
        raise GradjaxInputError(
            f"hyper={ {k: v.size for k, v in out.items()} } is invalid: expected lists of one "
            "common length (they are zipped into one axis; build a product grid with "
            "numpy.meshgrid first)"
        )
    return out, sizes.pop()


def train(
    net: Net | Any,
    data: Dataset,
    tcfg: TrainConfig,
    *,
    seeds: int = 8,
    key: int | jax.Array = 0,
    hyper: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    params: Any = None,
    progress: bool | Callable[[int, int], None] | None = None,
    segments: int | None = None,
    devices: int | Sequence[Any] | None = None,
) -> TrainResult:
    """Trains ``seeds`` copies of a model for each hyper-parameter setting, in one program.

    The model is gradjax's own network (a :class:`~gradjax.models.Net`: the fast path, with
    per-block records and overflow detection inside the network) or a user's model:

    * a Flax Linen module whose variables are only ``"params"`` (initialised on the data's
      input shape);
    * a factory ``make(rngs=nnx.Rngs(key)) -> nnx.Module`` (e.g. ``functools.partial(MLP,
      64, 10)``): each seed draws its own parameters; or an ``nnx.Module`` instance, whose
      parameters every seed starts from (seeds then differ in minibatch order only). The
      module's state must be ``nnx.Param`` only;
    * a pure pair ``(init_fn(key) -> params, apply_fn(params, x) -> logits)``.

    For a user's model the per-layer records are one per module that holds a weight matrix
    (a leaf of two or more axes), named by module path and grouped by
    :func:`gradjax.tree_paths.layer_slices` (a scanned stack gives one entry per layer), in
    natural order of the names; :attr:`TrainResult.layers` lists them. The norm of a module
    is that of its weight matrices together (biases and scales are left out, as the
    ``||dL/dW_l||`` of gradjax's own blocks), and a run is non-finite from the step where its
    output, loss, gradients or parameters are.

    Args:
      net: the model (see above); its inputs and outputs must match the data.
      data: a :class:`~gradjax.data.Dataset`.
      tcfg: the :class:`~gradjax.config.TrainConfig` (optimiser, schedule, mitigations).
      seeds: number of seeds; seed ``s`` sets the initial draw and the minibatch order.
      key: an integer seed in ``[0, 2**64)`` or a PRNG key.
      hyper: optional dict from hyper-parameter name (``learning_rate``, ``clip`` (inf = no
        clipping), ``warmup_steps``, ``total_steps``, ``end_lr_fraction``, ``weight_decay``,
        ``decoupled_weight_decay``, ``l1``, and for gradjax nets ``sigma_w``, ``sigma_b``) to
        equal-length lists, zipped into the ``hyper`` axis; names not given keep the
        config's values.
      params: optional initial parameters with leading axes ``(n_hyper, seeds)`` (e.g. the
        same network under several initialisation schemes); replaces the model's own draw.
        Without ``hyper`` their first axis is the hyper axis.
      progress: True for a progress bar, a callable ``progress(done_steps, total_steps)``, or
        None/False for silence.
      segments: number of compiled calls the steps are split into (default: 1 without
        progress, about 10 with it); each segment is one ``lax.scan``.
      devices: ``None`` for every device of a single-process run (one device across
        processes), an int ``n`` for the first ``n``, or a list of devices. The seed axis is
        split over them (``shard_map``; seeds are independent, so there is no
        communication), using the largest device count that divides ``seeds``. On a CPU,
        ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` (set before JAX starts)
        makes one device per core: each trains its share of seeds on its own core, which
        roughly doubles throughput on two cores because XLA runs small batched matmuls on
        about one core per device.

    Returns:
      A :class:`TrainResult` with axes ``("hyper", "seed")``.

    Raises:
      GradjaxInputError: on a model that does not fit the data, unknown or invalid
        hyper-parameters, or a gradjax net too large for memory (see :func:`check_fits`).

    Example:
      >>> import gradjax as gj
      >>> data = gj.data.digits()
      >>> net = gj.build(gj.NetConfig(depth=4, width=32, input_dim=64, out_dim=10, init="he",
      ...                             activation="relu"))
      >>> res = gj.train(net, data, gj.TrainConfig(learning_rate=0.05, steps=50), seeds=2,
      ...                hyper={"clip": [float("inf"), 1.0]})
      >>> res.history.loss.shape
      (2, 2, 50)
    """
    if not isinstance(tcfg, TrainConfig):
        raise invalid("tcfg", tcfg, "a gradjax TrainConfig")
    if not isinstance(data, Dataset):
        raise invalid("data", data, "a gradjax.data.Dataset")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise invalid("seeds", seeds, "an integer >= 1")
    seeds = int(seeds)
    check_key("key", key)
    hyper_np, n_hyper = _check_hyper(hyper, tcfg)
    if isinstance(net, Net):
        if net.cfg.input_dim != data.input_dim:
            raise invalid(
                "net input_dim", net.cfg.input_dim, f"the data's input size {data.input_dim}"
            )
        if net.cfg.out_dim != data.num_classes:
            raise invalid("net out_dim", net.cfg.out_dim, f"the data's {data.num_classes} classes")
        if net.cfg.norm == "batch" and tcfg.batch_size == 1:
            raise invalid("batch_size", 1, "an integer >= 2 with norm='batch'")
        model = _net_model(net)
    else:
        model = _user_model(net, data.x_train[:1])
        out_dim = model.describe["output_shape"][-1]
        if out_dim != data.num_classes:
            raise invalid("model output size", out_dim, f"the data's {data.num_classes} classes")
        init_names = sorted(set(hyper_np) & set(INIT_HYPERPARAMS))
        if init_names:
            raise invalid("hyper", init_names[0], "optimiser hyper-parameters for a user's model")
    if params is not None:
        lead = {jnp.shape(leaf)[:2] for leaf in jax.tree.leaves(params)}
        if not hyper_np and len(lead) == 1:
            n_hyper = next(iter(lead))[0]  # the params alone set the hyper axis
        if lead != {(n_hyper, seeds)}:
            raise invalid("params leading axes", sorted(lead), f"({n_hyper}, {seeds})")
    check_fits(net, data, tcfg, seeds=seeds, n_hyper=n_hyper)
    steps = tcfg.steps
    if segments is None:
        segments = 10 if progress else 1
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise invalid("segments", segments, "an integer >= 1")
    # Equal segments keep one compiled scan: use the largest divisor of steps <= segments.
    segments = max(d for d in range(1, min(segments, steps) + 1) if steps % d == 0)
    seg_len = steps // segments

    names = tuple(sorted(hyper_np))
    device_list = _seed_devices(devices, seeds)
    init_all, segment_all, eval_all = _compiled(
        model, tcfg, _chain_overrides(tcfg, names), names, params is not None, device_list
    )
    root = key if _is_key(key) else jax.random.key(int(key))
    keys = jax.random.split(root, seeds)
    hyper_j = {k: jnp.asarray(v, model.dtype) for k, v in hyper_np.items()}
    state, init_norms, indices = init_all(keys, hyper_j, params, data)
    if len(device_list) > 1:
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        # The runs' state and minibatch order are split over the seed mesh, the data is on
        # every device (the layout the sharded segment function expects).
        mesh = devices_lib.mesh(device_list, "seed")
        state = jax.device_put(state, NamedSharding(mesh, P(None, "seed")))
        indices = jax.device_put(indices, NamedSharding(mesh, P("seed")))
        data = jax.device_put(data, NamedSharding(mesh, P()))

    records = []
    with devices_lib.Progress(progress or False, steps, desc="train", unit="step") as bar:
        for s in range(segments):
            seg_idx = indices[:, s * seg_len : (s + 1) * seg_len]
            state, rec = segment_all(state, seg_idx, data)
            records.append(rec)
            if progress:
                jax.block_until_ready(rec.loss)
                bar.update((s + 1) * seg_len)
    rec = jax.tree.map(lambda *a: jnp.concatenate(a, axis=2), *records)
    tr, te = eval_all(state.params, data)
    history = TrainHistory(
        loss=rec.loss,
        grad_norms=rec.grad_norms,
        weight_norms=rec.weight_norms,
        update_norm=rec.update_norm,
        learning_rate=rec.learning_rate,
        alive=rec.alive,
        first_nonfinite=state.first_nonfinite,
        initial_weight_norms=init_norms,
        train=tr,
        test=te,
    )
    meta = _meta(model, data, tcfg, seeds=seeds, key=key, hyper=hyper_np)
    return TrainResult(
        history=history,
        hyper=hyper_j,
        layers=model.layers,
        meta=io.dumps_json(meta, indent=None),
    )


def _is_key(key: Any) -> bool:
    return not isinstance(key, (int, np.integer)) and hasattr(key, "dtype")


def _meta(
    model: _Model,
    data: Dataset,
    tcfg: TrainConfig,
    *,
    seeds: int,
    key: Any,
    hyper: Mapping[str, np.ndarray],
) -> dict:
    """The JSON-ready description of a run; equal descriptions mean the same run."""
    return io.json_safe(
        {
            "kind": "train",
            "model": model.kind,
            "net": model.describe,
            "layers": list(model.layers),
            "train": vars(tcfg).copy(),
            "data": data.name,
            "seeds": seeds,
            "key": "custom" if _is_key(key) else int(key),
            "hyper": {k: np.asarray(v).tolist() for k, v in hyper.items()},
        }
    )


def run_meta(
    net: Net,
    data: Dataset,
    tcfg: TrainConfig,
    *,
    seeds: int,
    key: int = 0,
    hyper: Mapping[str, Sequence[float]] | None = None,
) -> dict:
    """The metadata :func:`train` records for these arguments, before training.

    Args:
      net: a gradjax network.
      data: the data set.
      tcfg: the training configuration.
      seeds: number of seeds.
      key: the integer seed.
      hyper: the per-run hyper-parameters, if any.

    Returns:
      The dict that ``meta.json`` holds (without ``"axes"``); see :func:`check_output_dir`.
    """
    hyper_np, _ = _check_hyper(hyper, tcfg)
    return _meta(_net_model(net), data, tcfg, seeds=seeds, key=key, hyper=hyper_np)


# Files that mark a directory as holding something other than a training run.
FOREIGN_FILES = ("manifest.json", "arrays.npz", "chunks", "report.json", "report.md")
RUN_FILES = ("history.npz", "meta.json")


def check_output_dir(directory: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Refuses a directory that holds a sweep, a report or a different training run.

    A new or empty directory, or one holding this same run (equal metadata, e.g. a rerun),
    is accepted; its files are then replaced atomically.

    Args:
      directory: the output directory.
      meta: the run's metadata (see :func:`run_meta`).

    Raises:
      GradjaxInputError: naming ``out_dir`` and what it holds.
    """
    out = Path(directory)
    if not out.exists():
        return
    if not out.is_dir():
        raise invalid("out_dir", str(out), "a directory (it is a file)")
    allowed = "a new directory or one holding this same training run"
    foreign = [name for name in FOREIGN_FILES if (out / name).exists()]
    if foreign:
        raise invalid(
            "out_dir",
            str(out),
            f"{allowed}; it holds other results ({foreign[0]}) - use another directory",
        )
    if not any((out / name).exists() for name in RUN_FILES):
        return
    try:
        old = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("kind") != "train":
        raise invalid(
            "out_dir", str(out), f"{allowed}; it holds files of another run - use another directory"
        )
    new = io.json_safe(dict(meta))
    diff = sorted(k for k in set(old) | set(new) if k != "axes" and old.get(k) != new.get(k))
    if diff:
        raise invalid(
            "out_dir",
            str(out),
            f"{allowed}; it holds a different training run (differs in {', '.join(diff)}) - "
            "use another directory or delete it",
        )


class TrainCost(NamedTuple):
    """The size of a training call, estimated before it runs.

    Attributes:
      bytes: peak memory of the compiled program (every run's step, the minibatch order,
        the records).
      step_flops: FLOPs of one step of every run together.
      steps: the number of steps.
      output_bytes: the records brought back to the host.
    """

    bytes: int
    step_flops: int
    steps: int
    output_bytes: int

    @property
    def total_flops(self) -> int:
        """FLOPs of the whole call."""
        return self.step_flops * self.steps


def estimate(
    net: Net | Any, data: Dataset, tcfg: TrainConfig, *, seeds: int, n_hyper: int = 1
) -> TrainCost:
    """The :class:`TrainCost` of :func:`train` (see :mod:`gradjax.cost`).

    For gradjax's nets it counts parameters, gradients, optimiser slots and the activations
    the backward pass keeps; for a user's model (see :func:`train`) the parameters, gradients
    and optimiser slots only (its activations are not known up front), and FLOPs as dense
    layers (``6 x batch x`` weight entries; convolutions do more).

    Args:
      net: the model, as :func:`train` takes it.
      data: the data set.
      tcfg: the training configuration.
      seeds: number of seeds.
      n_hyper: length of the hyper axis.

    Returns:
      The estimate, in exact Python integers.
    """
    from gradjax import cost

    runs = seeds * n_hyper
    batch = data.n_train if tcfg.batch_size is None else min(tcfg.batch_size, data.n_train)
    slots = {"sgd": 0, "momentum": 1}.get(tcfg.optimizer, 2)
    if isinstance(net, Net):
        one = cost.network_cost(
            width=net.cfg.width,
            depth=net.cfg.depth,
            batch=batch,
            dtype=net.cfg.dtype,
            input_dim=net.cfg.input_dim,
            out_dim=net.cfg.out_dim,
            optimizer_slots=slots,
        )
        step_bytes, flops, layers = one.step_bytes, one.flops, net.cfg.depth
        item = np.dtype(net.cfg.dtype).itemsize
    else:
        model = _user_model(net, data.x_train[:1])
        step_bytes = model.param_bytes * (2 + slots)
        flops = 6 * batch * model.weight_entries
        layers, item = len(model.layers), np.dtype(model.dtype).itemsize
    # Per step and run: loss, update norm, learning rate, alive, and two per-layer norms.
    records = runs * tcfg.steps * (2 * layers + 4) * item
    indices = seeds * tcfg.steps * batch * 4
    data_bytes = sum(int(getattr(a, "nbytes", 0)) for a in jax.tree.leaves(data))
    # The records of all segments are concatenated at the end: twice their size at peak.
    total = runs * step_bytes + indices + 2 * records + data_bytes
    return TrainCost(bytes=total, step_flops=runs * flops, steps=tcfg.steps, output_bytes=records)


def check_fits(
    net: Net | Any, data: Dataset, tcfg: TrainConfig, *, seeds: int, n_hyper: int = 1
) -> TrainCost:
    """Refuses a training call that cannot fit in memory; returns its :class:`TrainCost`.

    Takes the arguments of :func:`estimate`.

    Returns:
      The estimate (see :func:`estimate`).

    Raises:
      GradjaxInputError: naming the sizes, what they need and the limit.
    """
    from gradjax import cost

    est = estimate(net, data, tcfg, seeds=seeds, n_hyper=n_hyper)
    size = (
        f"depth={net.cfg.depth}, width={net.cfg.width}"
        if isinstance(net, Net)
        else f"model={type(net).__name__}"
    )
    hyper = f", hyper values={n_hyper}" if n_hyper > 1 else ""
    what = f"training (steps={tcfg.steps}, {size}, seeds={seeds}{hyper})"
    cost.check_fits(what, est.bytes, cost.memory_limit_bytes(), unit="the whole run")
    return est


# ---------------------------------------------------------------------- statistics


@pytree_dataclass
class Quantiles:
    """Median and interquartile range over seeds (NaN-aware: diverged runs are left out).

    Attributes:
      median: the median over seeds.
      q25: the 25th percentile.
      q75: the 75th percentile.
      count: how many seeds contributed (finite values).
    """

    median: np.ndarray
    q25: np.ndarray
    q75: np.ndarray
    count: np.ndarray


def seed_quantiles(values: Any, *, axis: int = 1) -> Quantiles:
    """Median and IQR over the seed axis, ignoring non-finite (masked) entries.

    Args:
      values: an array with a seed axis (axis 1 of :class:`TrainHistory` arrays).
      axis: the seed axis.

    Returns:
      :class:`Quantiles` (NaN where no seed is finite).
    """
    arr = np.asarray(values, dtype=np.float64)
    arr = np.where(np.isfinite(arr), arr, np.nan)
    count = np.sum(np.isfinite(arr), axis=axis)
    with warnings.catch_warnings():
        # An all-NaN slice (every seed diverged) is a valid outcome: its quantiles are NaN.
        warnings.simplefilter("ignore", RuntimeWarning)
        q = np.nanpercentile(arr, [50, 25, 75], axis=axis)
    return Quantiles(median=q[0], q25=q[1], q75=q[2], count=count)


@pytree_dataclass
class Rate:
    """A proportion over seeds with its 95% Wilson score interval."""

    rate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int = static_field()


def wilson_interval(successes: Any, n: int, *, z: float = 1.959964) -> Rate:
    """The 95% Wilson score interval of a binomial proportion (Wilson 1927).

    Args:
      successes: counts (array-like).
      n: number of trials.
      z: the normal quantile (1.96 for 95%).

    Returns:
      A :class:`Rate`.
    """
    k = np.asarray(successes, dtype=np.float64)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return Rate(rate=p, low=centre - half, high=centre + half, n=int(n))


def divergence_rate(history: TrainHistory, *, axis: int = 1) -> Rate:
    """Fraction of seeds whose run became non-finite, with a Wilson 95% interval."""
    diverged = np.asarray(history.first_nonfinite) >= 0
    return wilson_interval(diverged.sum(axis=axis), diverged.shape[axis])


def early_oscillation(loss: Any, *, steps: int, smooth: int = 1) -> np.ndarray:
    """Excess total variation of log-loss over the first ``steps`` steps.

    ``sum_t |m_{t+1} - m_t| - |m_last - m_first|`` where ``m`` is log L averaged over a moving
    window of ``smooth`` steps (1: the raw curve). Zero for a monotone curve, the summed size
    of every up-and-down swing otherwise; smoothing over a few steps removes the step-to-step
    minibatch noise and keeps the swings that last longer (the early instability warm-up is
    meant to remove). A run that diverges in the window gets ``inf``.

    Args:
      loss: ``(..., n_steps)`` loss curves (NaN after divergence).
      steps: the window length (>= 2).
      smooth: moving-average length in steps (>= 1, < steps).

    Returns:
      ``(...)`` the statistic.
    """
    if isinstance(smooth, bool) or not isinstance(smooth, int) or not 1 <= smooth < steps:
        raise invalid("smooth", smooth, f"an integer in [1, {steps})")
    window = np.log(np.asarray(loss, dtype=np.float64)[..., :steps])
    if smooth > 1:
        c = np.cumsum(window, axis=-1)
        c = np.concatenate([np.zeros_like(c[..., :1]), c], axis=-1)
        window = (c[..., smooth:] - c[..., :-smooth]) / smooth
    tv = np.sum(np.abs(np.diff(window, axis=-1)), axis=-1)
    net = np.abs(window[..., -1] - window[..., 0])
    out = tv - net
    return np.where(np.isfinite(out), out, np.inf)


def early_peak(loss: Any, *, steps: int) -> np.ndarray:
    """Largest loss over the first ``steps`` steps divided by the initial loss (inf if the
    run diverged within them)."""
    window = np.asarray(loss, dtype=np.float64)[..., :steps]
    peak = np.max(np.where(np.isfinite(window), window, np.inf), axis=-1)
    return peak / window[..., 0]


# ---------------------------------------------------------------------- plotting


def _hyper_labels(result: TrainResult) -> list[str]:
    hyper = {k: np.asarray(v) for k, v in result.hyper.items()}
    n = int(np.asarray(result.history.loss).shape[0])
    if not hyper:
        return [""] * n
    return [", ".join(f"{k}={hyper[k][i]:g}" for k in sorted(hyper)) for i in range(n)]


def plot_training(result: TrainResult, *, title: str | None = None):
    """Training curves: loss, per-layer gradient norms and weight norms over steps.

    Medians over seeds with interquartile bands (diverged steps left out); one colour per
    entry of the hyper axis; the gradient-norm panel shows the first and the last block.

    Args:
      result: a :class:`TrainResult`.
      title: optional figure title.

    Returns:
      A matplotlib ``Figure``.
    """
    from gradjax.plotting import band, colors, new_figure, styled

    @styled
    def draw():
        h = result.history
        loss = np.asarray(h.loss)
        steps = np.arange(1, loss.shape[-1] + 1)
        labels = _hyper_labels(result)
        cols = colors(len(labels))
        fig, axes = new_figure(1, 3, width=7.0, height=2.6)
        for i, (label, col) in enumerate(zip(labels, cols, strict=True)):
            band(axes[0], steps, loss[i], color=col, label=label or None)
            g = np.asarray(h.grad_norms)[i]
            band(axes[1], steps, g[..., 0], color=col)
            band(axes[1], steps, g[..., -1], color=col, linestyle="--")
            # float64: the squares of a diverging run's float32 norms overflow.
            w = np.sqrt(np.sum(np.asarray(h.weight_norms, np.float64)[i] ** 2, axis=-1))
            band(axes[2], steps, w, color=col)
        axes[0].set(xlabel="step", ylabel="training loss (nats)", yscale="log", title="loss")
        axes[1].set(
            xlabel="step",
            ylabel=r"$\|\partial L/\partial W_l\|_F$",
            yscale="log",
            title="grad norm: layer 1 (—), last (--)",
        )
        axes[2].set(xlabel="step", ylabel=r"$(\sum_l \|W_l\|_F^2)^{1/2}$", title="weight norm")
        if any(labels):
            fig.legend(loc="outside lower center", ncol=min(len(labels), 4), fontsize=7)
        acc = np.asarray(h.test.accuracy)
        meta = json.loads(result.meta)
        net = meta.get("net", {})
        if "class" in net:  # a user's model
            what = f"{net['class']} ({len(result.layers)} weight layers)"
        else:
            what = (
                f"{net.get('activation', '')} depth {net.get('depth', '')} width "
                f"{net.get('width', '')}"
            )
        with warnings.catch_warnings():
            # Every seed of a setting may have diverged: its median accuracy is NaN.
            warnings.simplefilter("ignore", RuntimeWarning)
            medians = ", ".join(f"{np.nanmedian(a):.3f}" for a in acc)
        default = f"{what}, {meta.get('seeds', '')} seeds; median test accuracy {medians}"
        fig.suptitle(title or default, fontsize=9)
        return fig

    return draw()
