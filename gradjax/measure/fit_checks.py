"""Does a batch fit a user's model and loss? One check for every measurement of a batch.

:func:`checked_output` runs the model on the batch abstractly (``jax.eval_shape``: nothing
is computed) and refuses, in one line naming the field, what would otherwise fail deep
inside JAX or give a silently wrong number: an empty batch, inputs the model cannot take (its
own error, quoted), an output the built-in losses cannot read (a tuple or dict: the model's
fault, not the targets'), targets the loss cannot take, a loss that is not a scalar, and
cross-entropy labels outside the model's classes (the loss would be NaN). Used by
:func:`gradjax.diagnose` and the sweep probe of a user's model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from gradjax.measure.gradients import LOSSES, cross_entropy_loss
from gradjax.utils.caching import BoundedCache
from gradjax.utils.errors import GradjaxInputError, first_line, invalid

__all__ = ["checked_output", "output_shape"]

# Output shapes by (model structure, shapes): a second look at a model is free.
_OUTPUTS: BoundedCache = BoundedCache(32)


def output_shape(boundary: Any, x: Any, probes: Any) -> Any:
    """The model's output shapes (traced once per structure and shapes)."""
    key = boundary.cache_key(x, probes)
    if key not in _OUTPUTS:
        _OUTPUTS[key] = jax.eval_shape(
            lambda p, e: boundary.apply(p, x, e), boundary.params, probes
        )
    return _OUTPUTS[key]


def checked_output(
    boundary: Any, loss: Callable[..., Any], x: Any, y: Any, probes: Any = None
) -> Any:
    """The model's output shapes on ``x``, once the batch is known to fit model and loss.

    Args:
      boundary: the model (:func:`gradjax.boundary.wrap`).
      loss: ``loss(output, targets) -> scalar`` (a built-in loss or the user's).
      x: the inputs (batch on axis 0).
      y: the targets.
      probes: the block probes the measurement adds (zeros), or ``None``.

    Returns:
      The output's shape structure.

    Raises:
      GradjaxInputError: naming the field (see the module docstring).
    """
    leaves = jax.tree_util.tree_leaves(x)
    if leaves and np.ndim(leaves[0]) and np.shape(leaves[0])[0] == 0:
        raise invalid("batch inputs", f"shape {np.shape(leaves[0])}", "at least one example")
    try:
        out_shape = output_shape(boundary, x, probes)
    except GradjaxInputError:
        raise
    except Exception as err:  # the model's own shape error, whatever its type
        raise invalid(
            "batch inputs shape",
            jax.tree.map(np.shape, x),
            f"inputs the model accepts (it failed with: {first_line(err)})",
        ) from None
    if loss in LOSSES.values() and not hasattr(out_shape, "shape"):
        raise invalid(
            "model output",
            type(out_shape).__name__,
            "one array for the built-in losses (the model returns a "
            f"{type(out_shape).__name__}; pass a loss_fn that takes it)",
        )
    try:
        loss_shape = jax.eval_shape(loss, out_shape, y)
    except Exception as err:
        raise invalid(
            "batch targets shape",
            jax.tree.map(np.shape, y),
            f"targets the loss accepts for outputs {jax.tree.map(np.shape, out_shape)} "
            f"(it failed with: {first_line(err)})",
        ) from None
    if not hasattr(loss_shape, "shape") or loss_shape.shape != ():
        raise invalid(
            "loss_fn output shape",
            getattr(loss_shape, "shape", type(loss_shape).__name__),
            "a scalar () (reduce over the batch, e.g. with jnp.mean)",
        )
    _check_labels(loss, out_shape, y)
    return out_shape


def _check_labels(loss: Callable[..., Any], out_shape: Any, y: Any) -> None:
    """Cross-entropy labels must name classes the model outputs (else the loss is NaN)."""
    if loss is not cross_entropy_loss or isinstance(y, jax.core.Tracer):
        return
    labels = np.asarray(y)
    classes = int(out_shape.shape[-1])
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise invalid(
            "batch targets",
            f"labels from {labels.min()} to {labels.max()}",
            f"class labels in [0, {classes}) for a model with {classes} outputs",
        )
