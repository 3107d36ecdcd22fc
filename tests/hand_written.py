"""Recurrences written out by hand: the independent side of the time-axis tests."""

import jax
import jax.numpy as jnp


def lstm_step(params, c, h, x_t):
    """One step of Flax's LSTM cells (``LSTMCell`` and ``OptimizedLSTMCell``), gate by gate.

    ``params`` holds the input kernels ``ii, if, ig, io`` and the hidden ``hi, hf, hg, ho``
    (kernels and biases), as both cells store them.
    """

    def gate(name, act):
        hidden = h @ params["h" + name]["kernel"] + params["h" + name]["bias"]
        return act(x_t @ params["i" + name]["kernel"] + hidden)

    i, f = gate("i", jax.nn.sigmoid), gate("f", jax.nn.sigmoid)
    g, o = gate("g", jnp.tanh), gate("o", jax.nn.sigmoid)
    c = f * c + i * g
    return c, o * jnp.tanh(c)
