"""Ordering LAPACK calls inside one compiled program, so that they cannot deadlock.

jaxlib's CPU LAPACK kernels (SVD, QR, eigh) split a batch over XLA's intra-op thread pool
and block until every piece is done. Two such kernels that XLA starts at the same time can
each hold a pool thread while waiting for pieces that need a free one; on a two-core machine
(a two-thread pool) that waits forever. It was seen in a debugger: the QR factorisation of
one weight group and the orthogonal-factor step of another's, both of one network's
orthogonal initialisation, each blocked in ``ParallelBatchMap`` with no pool thread left.

gradjax therefore never leaves two LAPACK calls of one program independent of each other:
:func:`after` makes the input of the next call depend on the output of the previous one, so
they run one after the other, each still spread over the pool.
"""

from __future__ import annotations

from typing import Any

import jax


def after(x: Any, *deps: Any) -> Any:
    """``x``, made available only once every array in ``deps`` has been computed.

    Args:
      x: a pytree of arrays (typically the input of a LAPACK call).
      *deps: pytrees of arrays (typically the outputs of the previous LAPACK call).

    Returns:
      ``x``, unchanged in value, ordered after ``deps`` by an optimisation barrier.
    """
    if not jax.tree.leaves(deps):  # nothing to wait for
        return x
    return jax.lax.optimization_barrier((x, deps))[0]
