"""Weight initialisers, split into a unit-scale base draw and a deterministic gain.

``W = gain(kind, sigma_w, fan_in, fan_out) * base(kind, key, fan_out, fan_in)``. Keeping the
random draw apart from the scale gives common random numbers: a sweep over sigma_w draws the
base once per seed and only multiplies, so neighbouring scales see the same weights.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from gradjax.meanfield.activations import ActivationLike
from gradjax.utils.errors import check_choice, check_int, check_real
from gradjax.utils.lapack import after

# Schemes whose base draw is N(0, 1/fan_in).
_FAN_IN_GAUSSIAN = ("gaussian", "glorot", "he", "lecun", "critical")


def base_weight(
    key: jax.Array, kind: str, fan_out: int, fan_in: int, dtype=jnp.float32, *, order_after=()
) -> jax.Array:
    """Draws an unscaled weight matrix of shape ``(fan_out, fan_in)``.

    Args:
      key: PRNG key.
      kind: an init kind (see :data:`gradjax.nets.config.INIT_KINDS`).
      fan_out: rows (output units).
      fan_in: columns (input units).
      dtype: floating dtype of the result.
      order_after: for ``orthogonal``, arrays the QR waits for (see :mod:`gradjax.utils.lapack`).

    Returns:
      N(0, 1/fan_in) entries for the fan-in Gaussian schemes, N(0, 1) for ``normal``, and a
      Haar-random (semi-)orthogonal matrix for ``orthogonal``.
    """
    check_choice("init", kind, ("normal", "orthogonal", *_FAN_IN_GAUSSIAN))
    check_int("fan_out", fan_out, minimum=1)
    check_int("fan_in", fan_in, minimum=1)
    if kind == "orthogonal":
        return haar_orthogonal(key, fan_out, fan_in, dtype, order_after=order_after)
    w = jax.random.normal(key, (fan_out, fan_in), dtype)
    return w if kind == "normal" else w / math.sqrt(fan_in)


def haar_orthogonal(
    key: jax.Array, rows: int, cols: int, dtype=jnp.float32, *, order_after: Any = ()
) -> jax.Array:
    """A Haar-distributed matrix with orthonormal rows (rows <= cols) or columns (rows >= cols).

    Args:
      key: PRNG key.
      rows: number of rows.
      cols: number of columns.
      dtype: floating dtype.
      order_after: arrays whose computation the QR waits for (the previous QR of the same
        program; see :mod:`gradjax.utils.lapack`).

    Returns:
      ``Q`` of shape ``(rows, cols)``; square ``Q`` is orthogonal.
    """
    check_int("rows", rows, minimum=1)
    check_int("cols", cols, minimum=1)
    rows, cols = int(rows), int(cols)
    n, m = max(rows, cols), min(rows, cols)
    a = after(jax.random.normal(key, (n, m), dtype), order_after)
    q, r = jnp.linalg.qr(a)
    # Fixing the signs of R's diagonal makes Q Haar-distributed rather than QR-biased.
    q = q * jnp.where(jnp.diagonal(r) < 0, -1.0, 1.0).astype(dtype)
    return q if rows >= cols else q.T


def scheme_factor(
    kind: str,
    fan_in: int,
    fan_out: int,
    *,
    activation: ActivationLike = "tanh",
    sigma_b: float = 0.0,
) -> float:
    """The scheme's own scale, by which the user's sigma_w is multiplied.

    Args:
      kind: init kind.
      fan_in: input units.
      fan_out: output units.
      activation: used by ``critical`` only.
      sigma_b: used by ``critical`` only.

    Returns:
      1 for gaussian/normal/orthogonal/lecun, sqrt(2) for he, sqrt(2 fan_in/(fan_in+fan_out))
      for glorot, and sqrt(critical sigma_w^2) for critical, as a Python float (static under
      ``jit``; the sweep multiplies it by a traced sigma_w).
    """
    check_choice("init", kind, ("normal", "orthogonal", *_FAN_IN_GAUSSIAN))
    if kind == "he":
        return math.sqrt(2.0)
    if kind == "glorot":
        return math.sqrt(2.0 * fan_in / (fan_in + fan_out))
    if kind == "critical":
        from gradjax.meanfield.theory import critical_sigma_w2  # theory depends on nothing here

        return math.sqrt(float(critical_sigma_w2(activation, sigma_b**2)))
    return 1.0


def weight_gain(
    kind: str,
    sigma_w: float,
    fan_in: int,
    fan_out: int,
    *,
    activation: ActivationLike = "tanh",
    sigma_b: float = 0.0,
) -> float:
    """The multiplier applied to :func:`base_weight`: ``sigma_w * scheme_factor(...)``."""
    check_real("sigma_w", sigma_w, minimum=0.0)
    factor = scheme_factor(kind, fan_in, fan_out, activation=activation, sigma_b=sigma_b)
    return float(sigma_w) * factor


def init_weight(
    key: jax.Array,
    shape: tuple[int, int],
    *,
    kind: str = "gaussian",
    sigma_w: float = 1.0,
    dtype=jnp.float32,
) -> jax.Array:
    """Draws one weight matrix ``(fan_out, fan_in)`` of a scheme, scale included.

    Example:
      >>> import jax, gradjax as gj
      >>> w = gj.initializers.init_weight(
      ...     jax.random.key(0), (64, 32), kind="orthogonal", sigma_w=2.0)
      >>> w.shape
      (64, 32)
    """
    fan_out, fan_in = shape
    gain = weight_gain(kind, sigma_w, fan_in, fan_out)
    return gain * base_weight(key, kind, fan_out, fan_in, dtype)
