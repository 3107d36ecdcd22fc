"""Exact per-layer gradient norms from ``jax.grad``: ||dL/dW_l|| and ||dL/da_l||."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from gradjax.nets import layout
from gradjax.nets.models import Net, Params
from gradjax.utils.errors import invalid
from gradjax.utils.numerics import safe_norm
from gradjax.utils.pytree import pytree_dataclass

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def mse_loss(output: jax.Array, target: jax.Array) -> jax.Array:
    """Half the squared error, summed over outputs and averaged over the batch.

    Raises:
      GradjaxInputError: if ``target`` does not have the shape of ``output`` (a target that
        would broadcast, such as ``(4, 3)`` against outputs ``(4, 1)``, is refused).
    """
    if jnp.shape(target) != jnp.shape(output):
        raise invalid(
            "target", f"shape {jnp.shape(target)}", f"the output's shape {jnp.shape(output)}"
        )
    sq = jnp.sum((output - target) ** 2, axis=-1)
    return 0.5 * jnp.mean(sq)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy with integer labels, averaged over the batch.

    Raises:
      GradjaxInputError: if ``labels`` are not integers of shape ``logits.shape[:-1]``.
    """
    if jnp.shape(labels) != jnp.shape(logits)[:-1] or not jnp.issubdtype(
        jnp.result_type(labels), jnp.integer
    ):
        raise invalid(
            "labels",
            f"{jnp.result_type(labels)} of shape {jnp.shape(labels)}",
            f"integer class labels of shape {jnp.shape(logits)[:-1]}",
        )
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


LOSSES: dict[str, LossFn] = {"mse": mse_loss, "xent": cross_entropy_loss}


def get_loss(loss: str | LossFn) -> LossFn:
    """Looks up a loss by name (``mse``, ``xent``) or returns a callable unchanged."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise invalid("loss", loss, "one of " + ", ".join(LOSSES) + ", or a callable")
    return LOSSES[loss]


@pytree_dataclass
class LayerGradients:
    """Full gradients: dL/dparams and dL/da_l for every block.

    Attributes:
      loss: the loss value.
      params: dL/dparams, the same pytree as the parameters.
      activations: dL/da_l, ``(depth, ..., width)``.
    """

    loss: jax.Array
    params: Params
    activations: jax.Array


@pytree_dataclass
class GradientNorms:
    """Per-layer gradient norms (Frobenius), layer axis first.

    Attributes:
      loss: the loss value.
      weights: ``||dL/dW_l||`` for blocks 1..depth, ``(depth,)`` (a two-layer branch's
        first weight layer ``W``).
      biases: ``||dL/db_l||``, ``(depth,)``.
      activations: ``||dL/da_l||`` over the whole batch, ``(depth,)``.
      readout: ``||dL/dW_out||``.
    """

    loss: jax.Array
    weights: jax.Array
    biases: jax.Array
    activations: jax.Array
    readout: jax.Array


@functools.partial(jax.jit, static_argnames=("net", "loss"))
def layer_gradients(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> LayerGradients:
    """Gradients of the loss with respect to every parameter and every block output.

    One backward pass gives both: each block output gets a zero perturbation, and the
    gradient with respect to it is dL/da_l.

    Args:
      net: the network.
      params: its parameters.
      x: inputs, ``(batch, input_dim)``.
      y: targets (``(batch, out_dim)`` for ``mse``, integer labels for ``xent``).
      loss: a loss name or ``loss(output, target) -> scalar``.

    Returns:
      A :class:`LayerGradients`.
    """
    loss_fn = get_loss(loss)
    net.check_input(x)
    Net.require_materialized(params, "layer_gradients")  # dL/dW of lazy W would be scaled
    lead = jnp.shape(x)[:-1]
    eps = jnp.zeros((net.cfg.depth, *lead, net.cfg.width), net.dtype)

    def objective(p, e):
        value = loss_fn(net.forward(p, x, perturbations=e).output, y)
        if jnp.ndim(value) != 0:
            raise invalid("loss output shape", jnp.shape(value), "a scalar ()")
        return value

    value, (g_params, g_act) = jax.value_and_grad(objective, argnums=(0, 1))(params, eps)
    return LayerGradients(loss=value, params=g_params, activations=g_act)


def gradient_norms(grads: LayerGradients) -> GradientNorms:
    """Reduces :class:`LayerGradients` to per-layer Frobenius norms."""
    g = grads.params
    return GradientNorms(
        loss=grads.loss,
        weights=layout.layer_norms(g, "W"),
        biases=layout.layer_norms(g, "b"),
        activations=safe_norm(grads.activations, axis=tuple(range(1, grads.activations.ndim))),
        readout=safe_norm(layout.readout_weight(g)),
    )


@functools.partial(jax.jit, static_argnames=("net", "loss"))
def layer_gradient_norms(
    net: Net, params: Params, x: jax.Array, y: jax.Array, *, loss: str | LossFn = "mse"
) -> GradientNorms:
    """Per-layer gradient norms ``||dL/dW_l||``, ``||dL/db_l||`` and ``||dL/da_l||``.

    Args:
      net: the network.
      params: its parameters.
      x: inputs, ``(batch, input_dim)``.
      y: targets for ``loss``.
      loss: a loss name or callable.

    Returns:
      A :class:`GradientNorms` with a leading layer axis of size ``depth``.

    Example:
      >>> import jax, jax.numpy as jnp, gradjax as gj
      >>> net = gj.build(gj.NetConfig(depth=10, width=64, activation="sigmoid"))
      >>> p = net.init(jax.random.key(0))
      >>> x = jax.random.normal(jax.random.key(1), (8, 64))
      >>> g = gj.layer_gradient_norms(net, p, x, jnp.zeros((8, 1)))
      >>> bool(g.weights[0] < g.weights[-1])  # vanishing towards the input
      True
    """
    return gradient_norms(layer_gradients(net, params, x, y, loss=loss))
