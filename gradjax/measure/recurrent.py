"""The step Jacobian of a recurrence, ``J_t = dh_{t+1}/dh_t``, along its own trajectory.

The gradient through time is ``dL/dh_t = J_t^T dL/dh_{t+1} + (direct terms)``: the step
Jacobians play the part the layer Jacobians play in depth. Matrix-free (``jax.jvp`` and
``jax.vjp`` of one step of the model's own scan, :meth:`gradjax.boundary.Boundary.
apply_perturbed`), for every step at once:

* ``sigma_max``: the top singular value of ``J_t`` by power iteration on ``J_t^T J_t``. If it
  is below 1 at every step, the gradient through time must vanish: the sufficient condition of
  Pascanu et al. (2013), here measured on the map itself rather than bounded by
  ``||W_hh|| * max |phi'|``;
* ``mean_sq``: the mean squared singular value (Hutchinson, Rademacher probes), whose square
  root is the per-step gain mean-field theory predicts (``sqrt(chi_1)`` of the recurrent
  weights for a tanh RNN).

Over a batch the Jacobian is block-diagonal (examples do not mix), so ``sigma_max`` is the
largest over the examples and ``mean_sq`` their average.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.utils.caching import BoundedCache
from gradjax.utils.numerics import safe_norm

__all__ = ["step_spectra"]

_PROGRAMS: BoundedCache = BoundedCache(16)


def step_spectra(
    boundary: Any, x: Any, *, iterations: int = 30, probes: int = 16
) -> list[dict[str, np.ndarray]]:
    """``sigma_max`` and ``mean_sq`` of every step Jacobian of every recurrence over time.

    Args:
      boundary: the model (:func:`gradjax.boundary.wrap`).
      x: the inputs.
      iterations: power-iteration steps for ``sigma_max``.
      probes: Hutchinson probes for ``mean_sq``.

    Returns:
      One ``{"sigma_max": (steps,), "mean_sq": (steps,)}`` per recurrence over time, in
      execution order, steps in time order (host arrays, float64).
    """
    scans = boundary.scans(x)
    if not any(s.axis == "time" for s in scans):
        return []
    key = (boundary.cache_key(x), iterations, probes)
    if key not in _PROGRAMS:
        _PROGRAMS[key] = jax.jit(_program(boundary, scans, iterations, probes))
    found = jax.device_get(_PROGRAMS[key](boundary.params, boundary.state, x))
    return [{k: np.asarray(v, np.float64) for k, v in f.items()} for f in found if f is not None]


def _program(boundary: Any, scans: Any, iterations: int, probes: int):
    def observe(scan, one_step, before, xs):
        if scan.axis != "time":
            return None
        return _spectra_along(scan, one_step, before, xs, iterations, probes)

    def program(params, state, x):
        zeros = [[jnp.zeros(s.shape, s.dtype) for s in scan.shapes] for scan in scans]
        _, seen = boundary.apply_perturbed(params, x, None, zeros, state=state, observe=observe)
        return seen

    return program


def _spectra_along(scan, one_step, before, xs, iterations: int, probes: int) -> dict:
    def at(t):
        carry = [c[t] for c in before]
        x_t = [v[t] for v in xs]
        h = [carry[pos] for pos in scan.perturbed]
        f = lambda h: one_step(carry, h, x_t)
        _, pullback = jax.vjp(f, h)

        def gram(v):  # J^T J v, and J v
            jv = jax.jvp(f, (h,), (v,))[1]
            return pullback(jv)[0], jv

        def unit(v):
            n = safe_norm(jnp.concatenate([jnp.ravel(a) for a in v]))
            return [a / n for a in v]

        key = jax.random.fold_in(jax.random.key(0), t)
        start = unit([jax.random.normal(jax.random.fold_in(key, i), a.shape, a.dtype)
                      for i, a in enumerate(h)])  # fmt: skip
        v = jax.lax.fori_loop(0, iterations, lambda _, v: unit(gram(v)[0]), start)
        sigma_max = safe_norm(jnp.concatenate([jnp.ravel(a) for a in gram(v)[1]]))
        size = sum(a.size for a in h)

        def hutchinson(i):
            z = [jax.random.rademacher(jax.random.fold_in(key, 100 + i * 8 + j), a.shape, a.dtype)
                 for j, a in enumerate(h)]  # fmt: skip
            jz = jax.jvp(f, (h,), (z,))[1]
            return sum(jnp.sum(jnp.square(a)) for a in jz) / size

        mean_sq = jnp.mean(jax.lax.map(hutchinson, jnp.arange(probes)))
        return {"sigma_max": sigma_max, "mean_sq": mean_sq}

    return jax.lax.map(at, jnp.arange(scan.length))
