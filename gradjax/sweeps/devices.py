"""Devices for sweeps and training: which ones, the seed mesh, ``shard_map`` and progress.

One home for what the sweep engine and the training loop share:

* :func:`default_devices` and :func:`select_devices`: the devices a run uses. Accelerators and
  multi-host runs use every device. Several CPU devices of one process
  (``--xla_force_host_platform_device_count``) are one host's cores split up: a program whose
  heavy steps are LAPACK calls (the sweep's singular values) gains nothing from them, and
  jaxlib's batch-parallel LAPACK kernels can deadlock when several devices call them at once,
  so such programs take one CPU device (``cpu_all=False``); pure XLA programs (training) take
  them all.
* :func:`mesh` and :func:`shard_map`: a 1-D mesh over the chosen devices and a ``shard_map``
  that runs the unsharded program on every device's slice, with no collectives (seeds and grid
  points are independent).
* :func:`put_global` and :func:`to_host`: inputs built on every process from the same NumPy
  array, outputs gathered back to NumPy on every process.
* :class:`Progress`: the progress bar (``tqdm``) or a user callback ``progress(done, total)``.

Multi-host initialisation stays in :mod:`gradjax.sweeps.distributed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from gradjax.utils.errors import check_int, invalid


def is_cpu(devices: Sequence[Any]) -> bool:
    """Whether every device in ``devices`` is a CPU device."""
    return all(d.platform == "cpu" for d in devices)


def default_devices(*, cpu_all: bool = False) -> tuple:
    """The devices a run uses when the user names none.

    Args:
      cpu_all: on a single-process CPU run, use every CPU device (for pure XLA programs such
        as training); otherwise one, see the module docstring.

    Returns:
      ``jax.devices()``, or its first device for a single-process CPU run without
      ``cpu_all``.
    """
    available = tuple(jax.devices())
    one_cpu = jax.process_count() == 1 and jax.default_backend() == "cpu" and not cpu_all
    return available[:1] if one_cpu else available


def select_devices(devices: int | Sequence | None, *, default: Sequence | None = None) -> tuple:
    """The devices a sweep or a training run uses, from the user's ``devices`` argument.

    Args:
      devices: ``None`` for ``default``, an int ``n`` for the first ``n`` of
        ``jax.devices()``, or a non-empty list of distinct devices from ``jax.devices()``.
      default: the devices ``None`` stands for (default :func:`default_devices`).

    Returns:
      A tuple of devices.

    Raises:
      GradjaxInputError: naming ``devices`` and what is allowed.
    """
    available = jax.devices()
    if devices is None:
        return tuple(default_devices() if default is None else default)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        check_int("devices", int(devices), minimum=1, maximum=len(available))
        return tuple(available[: int(devices)])
    try:
        chosen = tuple(devices)
    except TypeError:
        chosen = ()
    allowed = f"None, a count in 1..{len(available)} or a non-empty list of jax.devices()"
    if not chosen or any(d not in available for d in chosen) or len(set(chosen)) != len(chosen):
        raise invalid("devices", devices, allowed)
    return chosen


def mesh(devices: Sequence[Any], axis: str = "seed") -> jax.sharding.Mesh:
    """A 1-D mesh named ``axis`` over ``devices``."""
    return jax.sharding.Mesh(np.asarray(devices, dtype=object), (axis,))


def shard_map(
    fn: Callable, devices: Sequence[Any], *, in_specs: Any, out_specs: Any, axis: str = "seed"
) -> Callable:
    """``fn`` run on every device's slice of its inputs, over :func:`mesh` ``(devices, axis)``.

    Every device runs the unsharded program of ``fn`` at its local shapes, with no
    communication: the points along ``axis`` are independent, so a device's numbers are those
    of the same slice computed alone.

    Args:
      fn: the per-device function.
      devices: the devices.
      in_specs: ``PartitionSpec`` (pytree prefix) per argument, naming ``axis`` where split.
      out_specs: ``PartitionSpec`` (pytree prefix) of the outputs.
      axis: the mesh axis name.

    Returns:
      The mapped function (not jitted).
    """
    return jax.shard_map(
        fn,
        mesh=mesh(devices, axis),
        in_specs=in_specs,
        out_specs=out_specs,
        check_vma=False,  # outputs are per-device slices by construction
    )


def put_global(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A global array from a NumPy array every process holds whole.

    Each process fills its own shards from ``x``, so this builds the same global array on one
    host or many (typed PRNG keys cannot be built this way: pass their ``key_data``).
    """
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-host) array as NumPy, on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Progress:
    """Progress over ``total`` units: a ``tqdm`` bar, a callback, or nothing.

    Args:
      progress: ``True`` for a bar, ``False`` for nothing, ``None`` for a bar only when
        ``total > 1``, or a callable ``progress(done, total)`` called after each update.
      total: units of work.
      desc: the bar's label.
      unit: the bar's unit name.
      initial: units already done (e.g. chunks loaded from a resumed run).

    Raises:
      GradjaxInputError: if ``progress`` is none of these.

    Use as a context manager; :meth:`update` takes the number of units done so far.
    """

    def __init__(
        self,
        progress: bool | Callable[[int, int], None] | None,
        total: int,
        *,
        desc: str,
        unit: str,
        initial: int = 0,
    ) -> None:
        if progress is not None and not isinstance(progress, bool) and not callable(progress):
            raise invalid("progress", progress, "None, True, False or a callable(done, total)")
        self.total = total
        self.callback = progress if callable(progress) and not isinstance(progress, bool) else None
        self.bar = None
        if progress is True or (progress is None and total > 1):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False)

    def update(self, done: int) -> None:
        """Reports ``done`` of the ``total`` units finished (computed or loaded)."""
        if self.bar is not None:
            self.bar.update(max(done - self.bar.n, 0))
        if self.callback is not None:
            self.callback(done, self.total)

    def close(self) -> None:
        """Closes the bar."""
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
