"""Forward signal statistics per layer: lengths q_l and correlations c_l (mean-field order
parameters, Poole et al. 2016)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gradjax.nets.models import Net, Params
from gradjax.utils.errors import invalid
from gradjax.utils.pytree import pytree_dataclass


@pytree_dataclass
class ForwardStats:
    """Per-layer forward statistics of a batch of inputs.

    Attributes:
      q: mean squared pre-activation per example, ``q_l^a = |z_l^a|^2 / N``, ``(depth, B)``.
      c: correlation of pre-activations between examples,
        ``c_l^{ab} = q_l^{ab} / sqrt(q_l^a q_l^b)``, ``(depth, B, B)``.
      act_sq: mean squared block output ``|a_l^a|^2 / N``, ``(depth, B)`` (the forward
        variance of residual stacks).
    """

    q: jax.Array
    c: jax.Array
    act_sq: jax.Array


@functools.partial(jax.jit, static_argnames=("net",))
def forward_statistics(net: Net, params: Params, x: jax.Array) -> ForwardStats:
    """q_l, c_l and the output variance of every block for a batch of inputs.

    Args:
      net: the network.
      params: its parameters.
      x: ``(batch, input_dim)``; two rows give the two-input correlation map c_l.

    Returns:
      A :class:`ForwardStats`.
    """
    if jnp.ndim(x) != 2:
        raise invalid("x.shape", jnp.shape(x), f"(batch, {net.cfg.input_dim})")
    trace = net.forward(params, x)
    z = trace.preact  # (L, B, N)
    n = z.shape[-1]
    gram = jnp.einsum("lan,lbn->lab", z, z) / n
    q = jnp.diagonal(gram, axis1=1, axis2=2)
    norm = jnp.sqrt(q[:, :, None] * q[:, None, :])
    c = gram / jnp.where(norm > 0, norm, 1.0)
    return ForwardStats(q=q, c=c, act_sq=jnp.mean(trace.act**2, axis=-1))
