"""Training with Optax mitigation chains, vmapped over seeds and numeric hyper-parameters.

One run is a pure ``lax.scan`` of :func:`train_step` over steps; :func:`train` vmaps it over
seeds and over a zipped list of hyper-parameter values (the learning rate, clipping norm,
warm-up length, penalties, or the initial weight scale ``sigma_w``), so a whole experiment is
one compiled call. Every step records the loss, per-layer gradient norms, per-layer weight
norms (both overflow-safe, :mod:`gradjax.utils.numerics`), the update norm and the learning rate.
The model is one of gradjax's networks (the fast path: blocks read through
:mod:`gradjax.nets.layout`) or a user's Flax Linen module, NNX module or pure ``(init_fn,
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

import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradjax.boundary.trainable import Trainable, net_trainable, user_trainable
from gradjax.measure.gradients import get_loss
from gradjax.nets.models import Net, Params
from gradjax.sweeps import devices as devices_lib
from gradjax.sweeps.store import DirectoryLock
from gradjax.training.checkpoints import SegmentStore, run_fingerprint
from gradjax.training.config import INIT_HYPERPARAMS, TrainConfig, check_hyper
from gradjax.training.data import Dataset
from gradjax.training.estimate import check_fits
from gradjax.training.optim import (
    chain_from_config,
    get_hyperparams,
    set_hyperparams,
    warmup_cosine,
)
from gradjax.training.results import Evaluation, StepRecord, TrainHistory, TrainResult, TrainState
from gradjax.training.run_folder import is_key, run_description
from gradjax.utils import files, interrupts
from gradjax.utils.errors import check_key, invalid
from gradjax.utils.numerics import safe_norm

# ---------------------------------------------------------------------- one step


def train_step(
    net: Net,
    tx: optax.GradientTransformation,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array],
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
) -> tuple[TrainState, StepRecord]:
    """One optimisation step of a gradjax net with a
    :func:`~gradjax.training.optim.mitigation_chain`.

    Pure: jit it with ``net``, ``tx`` and ``loss`` closed over (they are static). A step that
    makes anything non-finite (a pre-activation or block output included) leaves the
    parameters and optimiser state unchanged and marks the run diverged; a diverged run stays
    frozen.

    Args:
      net: the network.
      tx: a :func:`~gradjax.training.optim.mitigation_chain` (its hyper-parameters are read back for
        the recorded learning rate).
      loss: ``"xent"``, ``"mse"`` or ``loss(output, target) -> scalar``.
      state: the run's :class:`TrainState`.
      x: the minibatch inputs, ``(batch, input_dim)``.
      y: its targets.

    Returns:
      ``(new_state, record)``.
    """
    return _step(net_trainable(net), tx, loss, state, x, y)


def _step(
    model: Trainable,
    tx: optax.GradientTransformation,
    loss: str | Callable[[jax.Array, jax.Array], jax.Array],
    state: TrainState,
    x: jax.Array,
    y: jax.Array,
) -> tuple[TrainState, StepRecord]:
    """:func:`train_step` of any :class:`Trainable`."""
    loss_fn = get_loss(loss)
    params = state.params
    key = None if state.rng is None else jax.random.fold_in(state.rng, state.step)

    def loss_and_forward_finite(p):
        output, forward_finite, model_state = model.forward(p, state.model_state, x, key, True)
        return loss_fn(output, y), (forward_finite, model_state)

    (value, (forward_finite, model_state)), grads = jax.value_and_grad(
        loss_and_forward_finite, has_aux=True
    )(params)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    grad_norms = model.norms(grads)
    update_norm = safe_norm(jnp.stack([safe_norm(u) for u in jax.tree.leaves(updates)]))
    weight_norms = model.norms(new_params)
    # A non-finite gradient entry reaches the update (the optimiser's arithmetic, clipping
    # included, carries NaN and inf through), and a finite update of finite parameters can
    # only leave them non-finite by overflow, which the weight norms show: no extra pass over
    # the gradients or the parameters is needed to know the step is finite.
    finite = (
        jnp.isfinite(value)
        & forward_finite
        & jnp.isfinite(update_norm)
        & jnp.all(jnp.isfinite(weight_norms))
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
        model_state=keep(model_state, state.model_state),
        rng=state.rng,
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
    model: Trainable,
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
            model_state=model.init_state(jax.random.fold_in(key, 2)),
            rng=jax.random.fold_in(key, 3),
        )
        return state, model.norms(params)

    def segment_one(state, indices, data):
        def body(carry, idx):
            x = data.x_train[idx]
            y = _targets(data, tcfg.loss, data.y_train[idx], model.dtype)
            return _step(model, tx, tcfg.loss, carry, x, y)

        return jax.lax.scan(body, state, indices)

    def eval_one(params, model_state, data):
        # Evaluation mode: running statistics, no dropout.
        out = lambda x: model.forward(params, model_state, x, None, False)[0]
        ev = lambda x, y: _evaluate(out(x), y, tcfg.loss)
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
    eval_all = jax.vmap(jax.vmap(eval_one, in_axes=(0, 0, None)), in_axes=(0, 0, None))
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
    out: str | os.PathLike | None = None,
) -> TrainResult:
    """Trains ``seeds`` copies of a model for each hyper-parameter setting, in one program.

    The model is gradjax's own network (a :class:`~gradjax.nets.models.Net`: the fast path, with
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
    :func:`gradjax.utils.tree_paths.layer_slices` (a scanned stack gives one entry per layer), in
    natural order of the names; :attr:`TrainResult.layers` lists them. The norm of a module
    is that of its weight matrices together (biases and scales are left out, as the
    ``||dL/dW_l||`` of gradjax's own blocks), and a run is non-finite from the step where its
    output, loss, gradients or parameters are.

    Args:
      net: the model (see above); its inputs and outputs must match the data.
      data: a :class:`~gradjax.training.data.Dataset`.
      tcfg: the :class:`~gradjax.training.config.TrainConfig` (optimiser, schedule, mitigations).
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
        progress or ``out``, about 10 with either); each segment is one ``lax.scan``.
      devices: ``None`` for every device of a single-process run (one device across
        processes), an int ``n`` for the first ``n``, or a list of devices. The seed axis is
        split over them (``shard_map``; seeds are independent, so there is no
        communication), using the largest device count that divides ``seeds``. On a CPU,
        ``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>`` (set before JAX starts)
        makes one device per core: each trains its share of seeds on its own core (XLA runs
        small batched matmuls on about one core per device).
      out: optional directory: every finished segment is saved there as it finishes
        (:mod:`gradjax.training.checkpoints`), a rerun of the same run continues after the
        last saved segment with bit-identical histories, and the finished result is saved
        there (:meth:`TrainResult.save`). The directory's lock is held while it is written.

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
        raise invalid("data", data, "a gradjax.training.data.Dataset")
    if isinstance(seeds, bool) or not isinstance(seeds, (int, np.integer)) or seeds < 1:
        raise invalid("seeds", seeds, "an integer >= 1")
    seeds = int(seeds)
    check_key("key", key)
    hyper_np, n_hyper = check_hyper(hyper, tcfg)
    if isinstance(net, Net):
        if net.cfg.input_dim != data.input_dim:
            raise invalid(
                "net input_dim", net.cfg.input_dim, f"the data's input size {data.input_dim}"
            )
        if net.cfg.out_dim != data.num_classes:
            raise invalid("net out_dim", net.cfg.out_dim, f"the data's {data.num_classes} classes")
        if net.cfg.norm == "batch" and tcfg.batch_size == 1:
            raise invalid("batch_size", 1, "an integer >= 2 with norm='batch'")
        model = net_trainable(net)
    else:
        model = user_trainable(net, data.x_train[:1])
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
        segments = 10 if progress or out is not None else 1
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
    root = key if is_key(key) else jax.random.key(int(key))
    keys = jax.random.split(root, seeds)
    hyper_j = {k: jnp.asarray(v, model.dtype) for k, v in hyper_np.items()}
    meta = run_description(model, data, tcfg, seeds=seeds, key=key, hyper=hyper_np)
    lock, store = _segment_store(out, meta, segments, params)
    try:
        state, init_norms, indices = init_all(keys, hyper_j, params, data)
        records: list[Any] = []
        start = 0
        if store is not None:
            shapes = jax.eval_shape(segment_all, state, indices[:, :seg_len], data)[1]
            state, records, start = store.resume(state, shapes)
        state, indices, data = _placed(device_list, state, indices, data)
        with devices_lib.Progress(progress or False, steps, desc="train", unit="step") as bar:
            if start:
                bar.update(start * seg_len)
            for s in range(start, segments):
                interrupts.check()  # between segments: a safe point to stop at
                seg_idx = indices[:, s * seg_len : (s + 1) * seg_len]
                state, rec = segment_all(state, seg_idx, data)
                records.append(rec)
                if store is not None:
                    store.save(s, state, rec)
                if progress:
                    jax.block_until_ready(rec.loss)
                    bar.update((s + 1) * seg_len)
        tr, te = eval_all(state.params, state.model_state, data)
        result = _result(model, state, records, init_norms, (tr, te), hyper_j, meta)
        if store is not None:
            result.save(store.directory.parent)
            store.clear()
        return result
    finally:
        if lock is not None:
            lock.release()


def _segment_store(out: Any, meta: dict, segments: int, params: Any) -> tuple:
    """The locked output directory's segment store, or ``(None, None)`` without ``out``."""
    if out is None:
        return None, None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out)
    lock.acquire("out")
    return lock, SegmentStore(out, run_fingerprint(meta, segments, params))


def _placed(device_list: Sequence[Any], state: Any, indices: Any, data: Any) -> tuple:
    """The runs' state and minibatch order split over the seed mesh, the data on every
    device (the layout the sharded segment function expects); as they are on one device."""
    if len(device_list) <= 1:
        return state, indices, data
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = devices_lib.mesh(device_list, "seed")
    state = jax.device_put(state, NamedSharding(mesh, P(None, "seed")))
    indices = jax.device_put(indices, NamedSharding(mesh, P("seed")))
    return state, indices, jax.device_put(data, NamedSharding(mesh, P()))


def _result(model, state, records, init_norms, evaluations, hyper, meta) -> TrainResult:
    """The :class:`TrainResult` of finished segments: histories, final variables, metadata."""
    rec = jax.tree.map(lambda *a: jnp.concatenate(a, axis=2), *records)
    history = TrainHistory(
        loss=rec.loss,
        grad_norms=rec.grad_norms,
        weight_norms=rec.weight_norms,
        update_norm=rec.update_norm,
        learning_rate=rec.learning_rate,
        alive=rec.alive,
        first_nonfinite=state.first_nonfinite,
        initial_weight_norms=init_norms,
        train=evaluations[0],
        test=evaluations[1],
    )
    return TrainResult(
        history=history,
        hyper=hyper,
        variables={"params": state.params, "state": state.model_state},
        layers=model.layers,
        meta=files.dumps_json(meta, indent=None),
    )
