"""What training returns: the carry of one run, per-step records, histories and results."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from gradjax.nets.models import Params
from gradjax.utils import files
from gradjax.utils.pytree import pytree_dataclass, static_field
from gradjax.utils.tree_paths import path_name


@pytree_dataclass
class TrainState:
    """The carry of one run.

    Attributes:
      params: the network parameters (frozen at the last finite values once diverged).
      opt_state: the mitigation chain's state.
      alive: False from the first step with a non-finite value on.
      first_nonfinite: that step's index, or -1 while alive.
      step: the number of steps taken.
      model_state: the model's non-parameter state (BatchNorm statistics, NNX RNG streams),
        updated every step; ``()`` for a model without one.
      rng: the run's dropout key (a step draws its masks from ``fold_in(rng, step)``), or
        ``None`` for a model without dropout.
    """

    params: Params
    opt_state: Any
    alive: jax.Array
    first_nonfinite: jax.Array
    step: jax.Array
    model_state: Any = ()
    rng: Any = None


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
      variables: the final variables of every run, leading axes ``(n_hyper, seeds)``:
        ``{"params": ..., "state": ...}`` (``state``: BatchNorm statistics and other
        non-parameter state; ``()`` for a model without one).
    """

    history: TrainHistory
    hyper: dict[str, jax.Array]
    variables: Any = None
    layers: tuple[str, ...] = static_field(default=())
    axes: tuple[str, ...] = static_field(default=("hyper", "seed"))
    meta: str = static_field(default="{}")

    def to_xarray(self) -> Any:
        """The histories as an ``xarray.Dataset`` over ``hyper``, ``seed``, ``step``,
        ``layer``: :func:`gradjax.utils.labelled.train_dataset`."""
        from gradjax.utils.labelled import train_dataset

        return train_dataset(self)

    def to_dataframe(self) -> Any:
        """The per-layer records as a long ``pandas.DataFrame`` (a row per hyper, seed, step
        and layer): :func:`gradjax.utils.labelled.train_dataframe`."""
        from gradjax.utils.labelled import train_dataframe

        return train_dataframe(self)

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``history.npz`` (flat arrays, no pickle), ``variables.npz`` (the final
        parameters and state of every run, keys by path) and ``meta.json``; returns the dir.

        Both files are written atomically (:func:`gradjax.utils.files.atomic_write`): a reader or an
        interrupted run never sees a half-written file.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        flat = {
            path_name(path): np.asarray(v)
            for path, v in jax.tree_util.tree_flatten_with_path(self.history)[0]
        }
        flat.update({f"hyper/{k}": np.asarray(v) for k, v in self.hyper.items()})
        files.atomic_savez(out / "history.npz", flat)
        if self.variables is not None:
            arrays = {
                path_name(path): _savable(v)
                for path, v in jax.tree_util.tree_flatten_with_path(self.variables)[0]
            }
            files.atomic_savez(out / "variables.npz", arrays)
        meta = json.loads(self.meta)
        meta["axes"] = list(self.axes)
        files.atomic_write_json(out / "meta.json", meta)
        return out


def _savable(value: Any) -> np.ndarray:
    """A host array for ``np.savez``: a PRNG key as its raw key data."""
    if jax.dtypes.issubdtype(getattr(value, "dtype", np.float32), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(value))
    return np.asarray(value)
