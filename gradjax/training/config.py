"""The configuration of a training run. The module imports no JAX (``--help`` reads its tables)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gradjax.utils.errors import GradjaxInputError, check_choice, check_int, check_real, invalid

# The one table of optimiser names (the config, the chain and the CLI read it). "adamw" is
# Adam whose weight_decay is decoupled (Loshchilov & Hutter 2019), as optax.adamw.
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
# The data sets gradjax.training.data makes by name.
DATASETS = ("digits", "teacher_student")
# Hyper-parameters held in the chain's state (optax.inject_hyperparams): each may be given a
# different value per run, i.e. be a vmap axis.
HYPERPARAMS = (
    "learning_rate",
    "warmup_steps",
    "total_steps",
    "end_lr_fraction",
    "clip",
    "weight_decay",
    "decoupled_weight_decay",
    "l1",
)
# Hyper-parameters that set the initial parameters rather than the optimiser.
INIT_HYPERPARAMS = ("sigma_w", "sigma_b")
TRAIN_HYPERPARAMS = (*HYPERPARAMS, *INIT_HYPERPARAMS)
LOSS_NAMES = ("xent", "mse")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run: optimiser, schedule, mitigations and length.

    The learning rate rises linearly from 0 to ``learning_rate`` over ``warmup_steps`` and then
    follows a cosine decay to ``end_lr_fraction * learning_rate`` at step ``steps`` (optax's
    ``warmup_cosine_decay_schedule``; ``end_lr_fraction=1`` keeps it constant after warm-up).

    Attributes:
      optimizer: one of :data:`gradjax.training.config.OPTIMIZERS`: ``"sgd"``, ``"momentum"`` (heavy
        ball), ``"adam"`` or ``"adamw"`` (Adam with decoupled weight decay).
      learning_rate: peak learning rate, > 0.
      steps: number of optimisation steps, >= 1.
      batch_size: examples per step, drawn with replacement-free shuffles per run; ``None``
        uses the full training set every step.
      warmup_steps: linear warm-up length, in ``[0, steps]``.
      end_lr_fraction: final learning rate as a fraction of the peak, in ``[0, 1]``.
      clip: maximum global gradient norm (``optax.clip_by_global_norm``), > 0; ``None`` for no
        clipping.
      weight_decay: L2 penalty coefficient lambda, >= 0: adds ``lambda * w`` to the gradient
        (coupled L2), except with ``"adamw"``, where ``lambda * lr * w`` is subtracted after the
        Adam step (decoupled decay, Loshchilov & Hutter).
      l1: L1 penalty coefficient lambda (adds ``lambda * sign(w)``), >= 0.
      momentum: momentum of ``"momentum"`` and Adam's ``b1``, in ``[0, 1)``.
      loss: ``"xent"`` (softmax cross-entropy on integer labels) or ``"mse"``.
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.01
    steps: int = 1000
    batch_size: int | None = 128
    warmup_steps: int = 0
    end_lr_fraction: float = 0.0
    clip: float | None = None
    weight_decay: float = 0.0
    l1: float = 0.0
    momentum: float = 0.9
    loss: str = "xent"

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_real("learning_rate", self.learning_rate, strictly_positive=True)
        check_int("steps", self.steps, minimum=1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, minimum=1)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.warmup_steps > self.steps:
            raise invalid(
                "warmup_steps", self.warmup_steps, f"an integer in [0, steps={self.steps}]"
            )
        check_real("end_lr_fraction", self.end_lr_fraction, minimum=0.0)
        if self.end_lr_fraction > 1:
            raise invalid("end_lr_fraction", self.end_lr_fraction, "a number in [0, 1]")
        if self.clip is not None:
            check_real("clip", self.clip, strictly_positive=True)
        check_real("weight_decay", self.weight_decay, minimum=0.0)
        check_real("l1", self.l1, minimum=0.0)
        check_real("momentum", self.momentum, minimum=0.0)
        if self.momentum >= 1:
            raise invalid("momentum", self.momentum, "a number in [0, 1)")
        check_choice("loss", self.loss, LOSS_NAMES)

    def replace(self, **changes) -> TrainConfig:
        """Returns a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)


def check_hyper(
    hyper: Mapping[str, Any] | None, tcfg: TrainConfig
) -> tuple[dict[str, np.ndarray], int]:
    """Validates per-run hyper-parameter values; returns them as arrays and their count.

    Each value must be one that :class:`TrainConfig` accepts for its field
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
