"""BLAS/LAPACK threading of the CPU work gradjax launches: the one rule, and its scope.

**The rule.** While gradjax runs a program made of *batched small factorisations* on a CPU
(the batched SVDs behind layer spectra, the QRs of Lyapunov spectra and of orthogonal
initialisation), every BLAS library loaded in the process (OpenBLAS, MKL, BLIS; found by
threadpoolctl) uses **one thread**, and its previous setting comes back as soon as the
program's results are ready. Nothing is set anywhere else: not at import, not for a single
large factorisation (a batch of one keeps the process's setting), not when JAX's default
backend is a GPU or TPU, and no environment variable is read or written.

**Why.** jaxlib (0.10 and later) splits a batch of LAPACK problems over XLA's intra-op thread
pool, one pool thread per core, each calling LAPACK on its share of the batch. A
multi-threaded BLAS under each call starts threads of its own: on ``n`` cores, ``n`` pool
threads each fan out over ``n`` BLAS threads, and idle BLAS threads spin while they wait,
taking cores from the threads that have work. With one BLAS thread per call there is one
busy thread per core. A single large factorisation is the opposite case: its only
parallelism is BLAS's own, so it keeps the process's setting.

**The scope.** JAX dispatches a jitted program asynchronously, so a limit that ended when the
Python call returned would end before the program ran. The limit therefore covers the
dispatch of a program *and* the wait for its result: :func:`batched_lapack` is a ``with``
block, and gradjax uses it in

- :func:`gradjax.singular_values` (and :func:`gradjax.measure.spectra.singular_values`) called
  outside a transformation on a batch of matrices;
- the figure set behind ``gradjax figures`` (each figure's computation);
- the functions that call :func:`run_batched`.

Inside your own ``jax.jit`` gradjax cannot see when the program runs; wrap the call and the
wait yourself::

    with gj.threads.batched_lapack():
        s = jax.block_until_ready(my_jitted_spectra(params))

BLAS thread counts are process-wide (OpenBLAS keeps one count per process), so inside the
block other threads of the process that call BLAS use one thread too. :func:`settings`
reports what is in effect (the JSON of every benchmark records it).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax

#: BLAS threads per LAPACK call inside :func:`batched_lapack` (XLA's pool supplies the rest).
BATCHED_LAPACK_THREADS = 1

#: Environment variables that set BLAS/OpenMP/XLA threading; :func:`settings` reports them.
THREAD_ENV_VARS = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "XLA_FLAGS",
)


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


@functools.cache
def _controller() -> Any:
    """A threadpoolctl controller of the BLAS libraries of this process (made once).

    jaxlib's CPU LAPACK kernels call the LAPACK of SciPy's bundled OpenBLAS; importing
    ``scipy.linalg`` first makes sure that library is loaded when the controller looks.
    """
    import scipy.linalg  # noqa: F401 - loads the BLAS that jaxlib's LAPACK kernels use
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def batched_lapack(*, batch: int | None = None) -> Iterator[None]:
    """Applies the rule of this module for the duration of the block (on a CPU only).

    Args:
      batch: the number of independent factorisations the block runs, when known; ``1``
        (one large factorisation) leaves the threads as they are, as does a non-CPU
        default backend.

    Yields:
      Nothing; BLAS libraries use :data:`BATCHED_LAPACK_THREADS` threads inside the block
      and their previous settings are restored when it ends, also on an exception.
    """
    if (batch is not None and batch < 2) or not _on_cpu():
        yield
        return
    with _controller().limit(limits=BATCHED_LAPACK_THREADS, user_api="blas"):
        yield


def run_batched(fn: Callable[..., Any], *args: Any, batch: int | None = None, **kwargs) -> Any:
    """``fn(*args, **kwargs)`` under :func:`batched_lapack`, waiting for its result.

    Args:
      fn: typically a jitted function whose program holds batched factorisations.
      *args: its positional arguments.
      batch: see :func:`batched_lapack`.
      **kwargs: its keyword arguments.

    Returns:
      ``fn``'s result, ready (``jax.block_until_ready``).
    """
    with batched_lapack(batch=batch):
        return jax.block_until_ready(fn(*args, **kwargs))


def settings() -> dict[str, Any]:
    """The threading in effect now: environment variables and the BLAS libraries' threads.

    Returns:
      ``{"env": {name: value or None}, "blas": [{"internal_api", "version",
      "num_threads", "threading_layer", "prefix"}, ...], "cpu_count": int}``, JSON-ready.
    """
    keep = ("internal_api", "version", "num_threads", "threading_layer", "prefix")
    blas = [
        {k: info.get(k) for k in keep}
        for info in _controller().info()
        if info.get("user_api") == "blas"
    ]
    return {
        "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
        "blas": blas,
        "cpu_count": os.cpu_count(),
    }
