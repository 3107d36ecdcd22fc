"""Ready-made probes ``probe(params, key) -> pytree`` for the sweep engine.

Each probe draws its own inputs from ``key`` (the sweep hands every scale of a seed the same
key, so neighbouring scales see the same inputs) and calls the diagnostics; the engine itself
knows none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from gradjax.gradients import LossFn, layer_gradient_norms
from gradjax.jacobians import batch_layer_jacobians, expected_factors, layer_jacobians
from gradjax.lapack import after
from gradjax.models import Net, Params
from gradjax.signal import forward_statistics
from gradjax.spectra import singular_values, summarize_spectrum

Probe = Callable[[Params, jax.Array], Any]


def gradient_probe(net: Net, *, batch: int = 16, loss: str | LossFn = "mse") -> Probe:
    """Per-layer gradient norms on a batch of N(0, 1) inputs with N(0, 1) targets.

    Args:
      net: the network.
      batch: examples per probe.
      loss: ``mse`` (targets drawn N(0, 1)) or a callable of ``(output, target)``.

    Returns:
      ``probe(params, key) -> GradientNorms``.
    """

    def probe(params: Params, key: jax.Array):
        kx, ky = jax.random.split(key)
        x = jax.random.normal(kx, (batch, net.cfg.input_dim), net.dtype)
        y = jax.random.normal(ky, (batch, net.cfg.out_dim), net.dtype)
        return layer_gradient_norms(net, params, x, y, loss=loss)

    return probe


def spectrum_probe(net: Net, *, batch: int = 8) -> Probe:
    """Singular-value summaries of every layer Jacobian at one N(0, 1) input.

    Without normalisation the Jacobians come from their exact closed form
    ``diag(phi'(z_l)) W_l`` (plus the identity of residual blocks; see
    :func:`gradjax.expected_factors`), O(N^2) per layer instead of the O(N^3) of autodiff; with
    LayerNorm by autodiff; with BatchNorm they are those of the whole batch map over ``batch``
    inputs.

    The probe works on lazily scaled parameters (``lazy_scales``) and computes the singular
    values in its ``finalize`` step, one batched LAPACK program per sweep chunk (see
    :func:`gradjax.sweep`); called directly, ``probe(params, key)`` does both.

    Args:
      net: the network.
      batch: batch size used only for BatchNorm networks.

    Returns:
      ``probe(params, key) -> {"first": SpectrumSummary, "hidden": SpectrumSummary}``
      (hidden with a leading layer axis).
    """

    def jacobians(params: Params, key: jax.Array):
        if net.cfg.norm == "batch":
            x = jax.random.normal(key, (batch, net.cfg.input_dim), net.dtype)
            jac = batch_layer_jacobians(net, params, x)
        elif net.cfg.norm is None:
            x = jax.random.normal(key, (net.cfg.input_dim,), net.dtype)
            jac = expected_factors(net, params, x)
        else:
            x = jax.random.normal(key, (net.cfg.input_dim,), net.dtype)
            jac = layer_jacobians(net, params, x)
        return {"first": jac.first, "hidden": jac.hidden}

    def summaries(jac):
        # Leading axes broadcast: one network, or a whole chunk of them. The first block's
        # SVDs wait for the hidden ones (concurrent LAPACK calls can deadlock), so the large
        # hidden batch is the program's first step and runs on every core (gradjax.lapack).
        hidden = singular_values(jac["hidden"])
        first = singular_values(after(jac["first"], hidden))
        return {"first": summarize_spectrum(first), "hidden": summarize_spectrum(hidden)}

    def probe(params: Params, key: jax.Array):
        return summaries(jacobians(params, key))

    probe.lazy_scales = True
    probe.per_network = jacobians
    probe.finalize = summaries
    return probe


def signal_probe(net: Net, *, batch: int = 2) -> Probe:
    """Forward statistics q_l, c_l of ``batch`` N(0, 1) inputs; see :class:`ForwardStats`."""

    def probe(params: Params, key: jax.Array):
        x = jax.random.normal(key, (batch, net.cfg.input_dim), net.dtype)
        return forward_statistics(net, params, x)

    probe.lazy_scales = True  # forward pass only: see gradjax.sweep
    return probe


def combine(**probes: Probe) -> Probe:
    """Runs several probes on the same parameters; each gets its own key, named by keyword.

    Returns:
      ``probe(params, key) -> {name: result}``.
    """
    names = sorted(probes)

    def probe(params: Params, key: jax.Array):
        keys = jax.random.split(key, len(names))
        return {name: probes[name](params, k) for name, k in zip(names, keys, strict=True)}

    return probe


def layer_gradient_and_spectrum_probe(net: Net, *, batch: int = 16) -> Probe:
    """Gradient norms and Jacobian spectra, the two views of the chain rule, in one probe."""
    return combine(gradients=gradient_probe(net, batch=batch), spectra=spectrum_probe(net))
