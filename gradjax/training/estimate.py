"""The size of a training call, estimated before it runs (see :mod:`gradjax.sweeps.cost`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from gradjax.boundary.trainable import user_trainable
from gradjax.nets.models import Net
from gradjax.training.config import TrainConfig
from gradjax.training.data import Dataset


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
    """The :class:`TrainCost` of :func:`train` (see :mod:`gradjax.sweeps.cost`).

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
    from gradjax.sweeps import cost

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
        model = user_trainable(net, data.x_train[:1])
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
    from gradjax.sweeps import cost

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
