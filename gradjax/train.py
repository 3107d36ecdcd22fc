"""Training with Optax mitigation chains, vmapped over seeds and numeric hyper-parameters.

One run is a pure ``lax.scan`` of :func:`train_step` over steps; :func:`train` vmaps it over
seeds and over a zipped list of hyper-parameter values (the learning rate, clipping norm,
warm-up length, penalties, or the initial weight scale ``sigma_w``), so a whole experiment is
one compiled call. Every step records the loss, per-layer gradient norms (from
:func:`gradjax.optim.record_gradient_norms`), per-layer weight norms, the update norm and the
learning rate.

A run that produces a non-finite loss, gradient, update or weight is *diverged* from that step
on: its parameters are frozen at the last finite values, :attr:`TrainHistory.first_nonfinite`
records the step, :attr:`TrainHistory.alive` is False from there, and the recorded values of
later steps are NaN (missing), so NaN-aware statistics over seeds (:func:`seed_quantiles`)
summarise the runs that are still alive without the diverged ones polluting them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradjax.config import TrainConfig
from gradjax.data import Dataset
from gradjax.distributed import select_devices
from gradjax.errors import GradjaxInputError, invalid
from gradjax.gradients import get_loss
from gradjax.models import Net, Params
from gradjax.numerics import safe_norm
from gradjax.optim import (
    HYPERPARAMS,
    chain_from_config,
    get_hyperparams,
    group_norms,
    recorded_norms,
    set_hyperparams,
    warmup_cosine,
)
from gradjax.results import pytree_dataclass, static_field

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
      axes: ``("hyper", "seed")``.
      meta: JSON-safe description (configs, data set, seeds, key).
    """

    history: TrainHistory
    hyper: dict[str, jax.Array]
    axes: tuple[str, ...] = static_field(default=("hyper", "seed"))
    meta: str = static_field(default="{}")

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``history.npz`` (flat arrays, no pickle) and ``meta.json``; returns the dir."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        flat = {
            "/".join(str(getattr(k, "name", getattr(k, "key", k))) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(self.history)[0]
        }
        flat.update({f"hyper/{k}": np.asarray(v) for k, v in self.hyper.items()})
        np.savez(out / "history.npz", **flat)
        meta = json.loads(self.meta)
        meta["axes"] = list(self.axes)
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
        return out


# ---------------------------------------------------------------------- one step


def _layer_weight_norms(params: Params) -> jax.Array:
    hidden = params["hidden"]["W"]
    return jnp.concatenate(
        [
            safe_norm(params["input"]["W"])[None],
            safe_norm(hidden.reshape(hidden.shape[0], -1), axis=1),
        ]
    )


def _layer_grad_norms(norms: Mapping[str, jax.Array], depth: int) -> jax.Array:
    """Per-block ``||W_l||`` from :func:`~gradjax.optim.group_norms` of a gradjax pytree."""
    # The names group_norms gives gradjax's parameter layout.
    names = ["input/W", *(f"hidden/{i}/W" for i in range(depth - 1))]
    return jnp.stack([norms[n] for n in names])


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
    makes anything non-finite leaves the parameters and optimiser state unchanged and marks
    the run diverged; a diverged run stays frozen.

    Args:
      net: the network.
      tx: a mitigation chain built with ``record_norms=True``.
      loss: ``"xent"``, ``"mse"`` or ``loss(output, target) -> scalar``.
      state: the run's :class:`TrainState`.
      x: the minibatch inputs, ``(batch, in_dim)``.
      y: its targets.

    Returns:
      ``(new_state, record)``.
    """
    loss_fn = get_loss(loss)
    params = state.params
    value, grads = jax.value_and_grad(lambda p: loss_fn(net.apply(p, x), y))(params)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    # Each tensor is reduced once: the per-layer norms give the global ones (a norm of
    # norms), and the clipping transformation's global norm is built from the same per-layer
    # norms of the same gradients, which XLA computes once.
    raw = recorded_norms(opt_state)
    grad_norms = _layer_grad_norms(raw, net.cfg.depth)
    all_grads = safe_norm(jnp.stack(list(raw.values())))
    update_norm = safe_norm(jnp.stack([safe_norm(u) for u in jax.tree.leaves(updates)]))
    param_norms = group_norms(new_params)
    weight_norms = _layer_grad_norms(param_norms, net.cfg.depth)
    all_params = safe_norm(jnp.stack(list(param_norms.values())))
    finite = (
        jnp.isfinite(value)
        & jnp.isfinite(all_grads)
        & jnp.isfinite(update_norm)
        & jnp.isfinite(all_params)
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
      x: inputs, ``(n, in_dim)``.
      y: integer labels, ``(n,)`` (one-hot encoded for ``"mse"``).
      loss: the loss name or callable.

    Returns:
      An :class:`Evaluation`; accuracy is 0 where the outputs are not finite.
    """
    out = net.apply(params, x)
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
    return tuple(sorted(over.items()))


@functools.lru_cache(maxsize=64)
def _compiled(
    net: Net,
    tcfg: TrainConfig,
    overrides: tuple[tuple[str, Any], ...],
    names: tuple[str, ...],
    with_params: bool,
    devices: tuple = (),
) -> tuple[Callable, Callable, Callable]:
    """The jitted init / segment / evaluation functions of one experiment shape (cached).

    With several ``devices`` the segment function is a ``shard_map`` over their seed axis.
    """
    tx = chain_from_config(tcfg, **dict(overrides))

    def init_one(key, hyper, params0):
        k_init = jax.random.fold_in(key, 0)
        if with_params:
            params = params0
        else:
            base = net.init_base(k_init)
            params = net.scale(base, sigma_w=hyper.get("sigma_w"), sigma_b=hyper.get("sigma_b"))
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
        return state, _layer_weight_norms(params)

    def segment_one(state, indices, data):
        def body(carry, idx):
            x = data.x_train[idx]
            y = _targets(data, tcfg.loss, data.y_train[idx], net.dtype)
            return train_step(net, tx, tcfg.loss, carry, x, y)

        return jax.lax.scan(body, state, indices)

    def eval_one(params, data):
        ev = lambda x, y: evaluate(net, params, x, y, loss=tcfg.loss)
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
        segment_all = jax.shard_map(
            segment_all,
            mesh=_seed_mesh(devices),
            in_specs=(P(None, "seed"), P("seed"), P()),
            out_specs=P(None, "seed"),
            check_vma=False,
        )
    eval_all = jax.vmap(jax.vmap(eval_one, in_axes=(0, None)), in_axes=(0, None))
    return (
        jax.jit(init_all),
        jax.jit(segment_all),
        jax.jit(eval_all),
    )


def _seed_devices(devices: Any, seeds: int) -> tuple:
    """The devices the seed axis is split over: as many as divide ``seeds``."""
    available = jax.devices()
    default = available if jax.process_count() == 1 else available[:1]
    chosen = select_devices(devices, default=default)
    n = max(k for k in range(1, len(chosen) + 1) if seeds % k == 0)
    return chosen[:n]


def _seed_mesh(devices: tuple) -> Any:
    from jax.sharding import Mesh

    return Mesh(np.asarray(devices, dtype=object), ("seed",))


def _place_on_mesh(devices: tuple, state: Any, indices: jax.Array, data: Dataset) -> tuple:
    """Puts the runs' state and minibatch order on the seed mesh, the data on every device."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = _seed_mesh(devices)
    state = jax.device_put(state, NamedSharding(mesh, P(None, "seed")))
    indices = jax.device_put(indices, NamedSharding(mesh, P("seed")))
    data = jax.device_put(data, NamedSharding(mesh, P()))
    return state, indices, data


def _check_hyper(
    hyper: Mapping[str, Any] | None, tcfg: TrainConfig
) -> tuple[dict[str, np.ndarray], int]:
    if not hyper:
        return {}, 1
    if not isinstance(hyper, Mapping):
        raise invalid("hyper", hyper, "a dict of name -> list of values")
    out, sizes = {}, set()
    for name, values in hyper.items():
        if name not in TRAIN_HYPERPARAMS:
            raise invalid("hyper", name, "names from " + ", ".join(TRAIN_HYPERPARAMS))
        arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if arr.ndim != 1 or arr.size == 0:
            raise invalid(f"hyper[{name!r}]", values, "a non-empty 1-D list of numbers")
        if np.any(np.isnan(arr)):
            raise invalid(f"hyper[{name!r}]", values, "numbers, not NaN")
        bad = {
            "learning_rate": lambda a: np.any(~np.isfinite(a)) or np.any(a <= 0),
            "clip": lambda a: np.any(a <= 0),
            "warmup_steps": lambda a: np.any(a < 0) or np.any(a > tcfg.steps),
            "end_lr_fraction": lambda a: np.any(a < 0) or np.any(a > 1),
            "total_steps": lambda a: np.any(a < 1),
        }.get(name, lambda a: np.any(~np.isfinite(a)) or np.any(a < 0))
        if bad(arr):
            allowed = {
                "learning_rate": "finite numbers > 0",
                "clip": "numbers > 0 (inf: no clipping)",
                "warmup_steps": f"numbers in [0, steps={tcfg.steps}]",
                "end_lr_fraction": "numbers in [0, 1]",
                "total_steps": "numbers >= 1",
            }.get(name, "finite numbers >= 0")
            raise invalid(f"hyper[{name!r}]", values, allowed)
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
    net: Net,
    data: Dataset,
    tcfg: TrainConfig,
    *,
    seeds: int = 8,
    key: int | jax.Array = 0,
    hyper: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    params: Params | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    segments: int | None = None,
    devices: int | Sequence[Any] | None = None,
) -> TrainResult:
    """Trains ``seeds`` copies of ``net`` for each hyper-parameter setting, in one program.

    Args:
      net: the network; its ``in_dim`` and ``out_dim`` must match the data.
      data: a :class:`~gradjax.data.Dataset`.
      tcfg: the :class:`~gradjax.config.TrainConfig` (optimiser, schedule, mitigations).
      seeds: number of seeds; seed ``s`` sets the initial draw and the minibatch order.
      key: an int or a PRNG key.
      hyper: optional dict from hyper-parameter name (``learning_rate``, ``clip`` (inf = no
        clipping), ``warmup_steps``, ``total_steps``, ``end_lr_fraction``, ``weight_decay``,
        ``l1``, ``sigma_w``, ``sigma_b``) to equal-length lists, zipped into the
        ``hyper`` axis; names not given keep the config's values.
      params: optional initial parameters with leading axes ``(n_hyper, seeds)`` (e.g. the
        same network under several initialisation schemes); replaces the net's own draw.
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
      GradjaxInputError: on mismatched data, unknown or invalid hyper-parameters.

    Example:
      >>> import gradjax as gj
      >>> data = gj.data.digits()
      >>> net = gj.build(gj.NetConfig(depth=4, width=32, in_dim=64, out_dim=10, init="he",
      ...                             activation="relu"))
      >>> res = gj.train_runs(net, data, gj.TrainConfig(learning_rate=0.05, steps=50), seeds=2,
      ...                hyper={"clip": [float("inf"), 1.0]})
      >>> res.history.loss.shape
      (2, 2, 50)
    """
    if not isinstance(net, Net):
        raise invalid("net", net, "a gradjax Net (gradjax.build(NetConfig(...)))")
    if not isinstance(tcfg, TrainConfig):
        raise invalid("tcfg", tcfg, "a gradjax TrainConfig")
    if not isinstance(data, Dataset):
        raise invalid("data", data, "a gradjax.data.Dataset")
    if net.cfg.input_dim != data.in_dim:
        raise invalid("net in_dim", net.cfg.input_dim, f"the data's input size {data.in_dim}")
    if net.cfg.out_dim != data.num_classes:
        raise invalid("net out_dim", net.cfg.out_dim, f"the data's {data.num_classes} classes")
    if net.cfg.norm == "batch" and tcfg.batch_size == 1:
        raise invalid("batch_size", 1, "an integer >= 2 with norm='batch'")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise invalid("seeds", seeds, "an integer >= 1")
    hyper_np, n_hyper = _check_hyper(hyper, tcfg)
    if params is not None:
        lead = {jnp.shape(leaf)[:2] for leaf in jax.tree.leaves(params)}
        if not hyper_np and len(lead) == 1:
            n_hyper = next(iter(lead))[0]  # the params alone set the hyper axis
        if lead != {(n_hyper, seeds)}:
            raise invalid("params leading axes", sorted(lead), f"({n_hyper}, {seeds})")
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
        net, tcfg, _chain_overrides(tcfg, names), names, params is not None, device_list
    )
    root = jax.random.key(key) if isinstance(key, int) else key
    keys = jax.random.split(root, seeds)
    hyper_j = {k: jnp.asarray(v, net.dtype) for k, v in hyper_np.items()}
    state, init_norms, indices = init_all(keys, hyper_j, params, data)
    if len(device_list) > 1:
        state, indices, data = _place_on_mesh(device_list, state, indices, data)

    report = _progress_reporter(progress, steps)
    records = []
    for s in range(segments):
        seg_idx = indices[:, s * seg_len : (s + 1) * seg_len]
        state, rec = segment_all(state, seg_idx, data)
        records.append(rec)
        if report is not None:
            jax.block_until_ready(rec.loss)
            report((s + 1) * seg_len, steps)
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
    meta = {
        "net": {
            k: (v if isinstance(v, (int, float, str, type(None))) else repr(v))
            for k, v in vars(net.cfg).items()
        },
        "train": vars(tcfg).copy(),
        "data": data.name,
        "seeds": seeds,
        "key": key if isinstance(key, int) else "custom",
        "hyper": {k: v.tolist() for k, v in hyper_np.items()},
    }
    return TrainResult(history=history, hyper=hyper_j, meta=json.dumps(meta, default=str))


def _progress_reporter(progress, total):
    if not progress:
        return None
    if callable(progress):
        return progress
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="train", unit="step")

    def report(done, _total):
        bar.update(done - bar.n)
        if done >= _total:
            bar.close()

    return report


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
            w = np.sqrt(np.sum(np.asarray(h.weight_norms)[i] ** 2, axis=-1))
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
        default = (
            f"{net.get('activation', '')} depth {net.get('depth', '')} width "
            f"{net.get('width', '')}, {meta.get('seeds', '')} seeds; median test accuracy "
            + ", ".join(f"{np.nanmedian(a):.3f}" for a in acc)
        )
        fig.suptitle(title or default, fontsize=9)
        return fig

    return draw()
