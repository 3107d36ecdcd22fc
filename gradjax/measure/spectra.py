"""Singular values of Jacobians and their summaries."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradjax.utils import lapack
from gradjax.utils.errors import invalid
from gradjax.utils.pytree import pytree_dataclass


def singular_values(jac: jax.Array) -> jax.Array:
    """Singular values of a matrix or a batch of matrices (LAPACK, descending).

    On a CPU the batch is spread over XLA's threads every time; see
    :func:`gradjax.utils.lapack.singular_values`.

    Args:
      jac: ``(..., m, n)``.

    Returns:
      ``(..., min(m, n))``, largest first.

    Raises:
      GradjaxInputError: if ``jac`` has fewer than two axes.
    """
    if jnp.ndim(jac) < 2:
        raise invalid("jac", f"shape {jnp.shape(jac)}", "a (batch of) matrices (..., m, n)")
    return lapack.singular_values(jac)


@pytree_dataclass
class SpectrumSummary:
    """Summaries of a singular-value spectrum (leading axes kept).

    Attributes:
      mean_sq: mean squared singular value, ``tr(J^T J) / n`` (the mean chain-rule factor
        squared; its log-slope over depth is log chi_1).
      sigma_max: largest singular value.
      sigma_min: smallest singular value.
      condition: ``sigma_max / sigma_min`` (``inf`` when singular).
    """

    mean_sq: jax.Array
    sigma_max: jax.Array
    sigma_min: jax.Array
    condition: jax.Array


def summarize_spectrum(s: jax.Array) -> SpectrumSummary:
    """Summarises singular values along the last axis.

    Args:
      s: singular values, ``(..., k)``.

    Returns:
      A :class:`SpectrumSummary` with the leading shape of ``s``.
    """
    s_max = jnp.max(s, axis=-1)
    s_min = jnp.min(s, axis=-1)
    cond = jnp.where(s_min > 0, s_max / jnp.where(s_min > 0, s_min, 1.0), jnp.inf)
    return SpectrumSummary(
        mean_sq=jnp.mean(s**2, axis=-1), sigma_max=s_max, sigma_min=s_min, condition=cond
    )


def spectrum_summary(jac: jax.Array) -> SpectrumSummary:
    """Singular values of ``jac`` (``(..., m, n)``) summarised; see :class:`SpectrumSummary`.

    Raises:
      GradjaxInputError: for an empty Jacobian (no example, or a zero-sized map): no
        singular value to summarise.
    """
    if 0 in jnp.shape(jac):
        raise invalid("jac", f"shape {jnp.shape(jac)}", "a non-empty Jacobian (..., m, n)")
    return summarize_spectrum(singular_values(jac))
