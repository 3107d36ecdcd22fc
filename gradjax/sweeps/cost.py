"""Up-front cost estimates: what a run needs in bytes and FLOPs, refused before it starts.

A run whose smallest unit of work (one chunk of a sweep, one training step, one diagnosis)
cannot fit in the device's memory is refused with one line naming the size and the limit,
before anything is computed or written, e.g. ``check_fits("--width=1000000: one network",
estimate_network_bytes(1_000_000, 32, 16), memory_limit_bytes())`` raises
``GradjaxInputError: --width=1000000: one network needs 476837.2 GiB for one chunk; the limit
is 15.6 GiB``.

Estimates are for gradjax's own MLP stacks (``input -> depth blocks -> readout``); sizes are
counted in elements of ``dtype``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from gradjax.utils.errors import GradjaxInputError, check_int

GIB = 2**30


def format_bytes(n: float) -> str:
    """``n`` bytes as GiB (or MiB below 0.1 GiB), one decimal."""
    if n >= 0.1 * GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / 2**20:.1f} MiB"


def host_memory_bytes() -> int:
    """The host's physical memory in bytes (0 where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def memory_limit_bytes(device: Any = None) -> int:
    """The memory one device can give a program, in bytes.

    Args:
      device: a JAX device (default: ``jax.devices()[0]``).

    Returns:
      ``device.memory_stats()["bytes_limit"]`` where the backend reports it (GPUs, TPUs), else
      the host's physical memory (CPU devices share it).
    """
    if device is None:
        import jax

        device = jax.devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # backends without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return host_memory_bytes()


class NetworkCost(NamedTuple):
    """Bytes and FLOPs of one forward-and-backward pass of one MLP stack.

    Attributes:
      param_bytes: the parameters.
      activation_bytes: what the backward pass keeps (pre-activations and block outputs).
      step_bytes: parameters, their gradient, ``optimizer_slots`` optimizer copies and the
        activations (twice: forward values and their cotangents).
      flops: multiply-adds of the forward and backward matrix products (2 FLOPs each).
    """

    param_bytes: int
    activation_bytes: int
    step_bytes: int
    flops: int


def network_cost(
    *,
    width: int,
    depth: int,
    batch: int,
    dtype: Any = "float32",
    input_dim: int | None = None,
    out_dim: int = 1,
    optimizer_slots: int = 2,
) -> NetworkCost:
    """The :class:`NetworkCost` of one network of gradjax's MLP shape.

    Args:
      width: hidden width N.
      depth: blocks L (the input block and ``depth - 1`` hidden blocks).
      batch: examples per pass.
      dtype: element type.
      input_dim: input size (default ``width``), as :class:`gradjax.NetConfig` names it.
      out_dim: readout size.
      optimizer_slots: copies of the parameters an optimizer keeps (Adam: 2, SGD: 0).

    Returns:
      The estimate (exact Python integers: no overflow at any size).
    """
    for name, value in (("width", width), ("depth", depth), ("batch", batch)):
        check_int(name, value, minimum=1)
    input_dim = width if input_dim is None else input_dim
    item = np.dtype(dtype).itemsize
    weights = input_dim * width + (depth - 1) * width * width + width * out_dim
    params = weights + depth * width + out_dim
    acts = 2 * depth * batch * width
    param_bytes = params * item
    activation_bytes = acts * item
    step_bytes = param_bytes * (2 + optimizer_slots) + 2 * activation_bytes
    flops = 3 * 2 * batch * weights  # forward, and twice as much backward
    return NetworkCost(param_bytes, activation_bytes, step_bytes, flops)


def estimate_network_bytes(
    width: int, depth: int, batch: int, dtype: Any = "float32", **kwargs: Any
) -> int:
    """Bytes of one training or gradient step of one network (see :func:`network_cost`)."""
    return network_cost(width=width, depth=depth, batch=batch, dtype=dtype, **kwargs).step_bytes


def check_fits(what: str, needed_bytes: int, limit_bytes: int, *, unit: str = "one chunk") -> None:
    """Refuses work whose smallest unit cannot fit in memory.

    Args:
      what: names the input responsible, e.g. ``"--width=1000000: one network"``.
      needed_bytes: the estimate for one unit.
      limit_bytes: what the device gives (see :func:`memory_limit_bytes`); ``<= 0`` means
        unknown, and nothing is refused.
      unit: what one unit is, for the message.

    Raises:
      GradjaxInputError: ``"<what> needs X GiB for <unit>; the limit is Y GiB"``.
    """
    if limit_bytes > 0 and needed_bytes > limit_bytes:
        raise GradjaxInputError(
            f"{what} needs {format_bytes(needed_bytes)} for {unit}; "
            f"the limit is {format_bytes(limit_bytes)}"
        )


class Estimate(NamedTuple):
    """A run's cost up front: per chunk and in total.

    Attributes:
      chunk_bytes: peak bytes of one chunk.
      chunk_flops: FLOPs of one chunk.
      chunks: number of chunks.
      output_bytes: bytes of the results held on the host.
    """

    chunk_bytes: int
    chunk_flops: int
    chunks: int
    output_bytes: int

    @property
    def total_flops(self) -> int:
        """FLOPs of the whole run."""
        return self.chunk_flops * self.chunks

    def describe(self) -> str:
        """One line: per chunk, chunks, total."""
        return (
            f"{self.chunks} chunks of {format_bytes(self.chunk_bytes)} and "
            f"{self.chunk_flops / 1e9:.3g} GFLOP each ({self.total_flops / 1e12:.3g} TFLOP in "
            f"all); results {format_bytes(self.output_bytes)}"
        )
