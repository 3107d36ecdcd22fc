"""Multi-host sweeps on JAX's own distributed runtime.

A sweep across hosts is the single-host sweep started once per process: every process calls
:func:`initialize` first (before any other JAX call), then runs the same
:func:`gradjax.sweep`. ``jax.devices()`` then lists the devices of every host, the sweep's
mesh spans them all, each process feeds its own devices from the (small, deterministic)
sweep inputs, and every process gets the whole result back. Only process 0 writes the
resumable output directory, so ``out_dir`` must be on a filesystem all hosts share.

Launch, per cluster type:

* **SLURM** (multi-GPU nodes): one task per node, or one per GPU; JAX reads the coordinator,
  process count and rank from SLURM's environment::

      srun --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 \\
          gradjax sweep --distributed --depth 64 --width 512 --seeds 64 --out /shared/run1

* **Cloud TPU pods**: run the same command on every worker (e.g.
  ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command="gradjax sweep --distributed
  ..."``); the TPU metadata supplies everything.

* **Anywhere else** (plain SSH, Kubernetes without auto-detection): name the coordinator
  (host:port of process 0, reachable from all), the process count and each process's rank::

      # on host k of N (k = 0 .. N-1)
      gradjax sweep --distributed --coordinator host0:1234 --num-processes N \\
          --process-id k --out /shared/run1 ...

  or, from Python, ``gradjax.sweeps.distributed.initialize(coordinator_address="host0:1234",
  num_processes=N, process_id=k)``.

On CPU-only machines several processes can share one host for testing (each with its own
fake devices through ``XLA_FLAGS=--xla_force_host_platform_device_count=K``); JAX's CPU
collectives (gloo) carry the final gather.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

# Device selection lives in gradjax.sweeps.devices; the name stays importable from here.
from gradjax.sweeps.devices import select_devices as select_devices
from gradjax.utils.errors import check_int, invalid


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands in a (possibly single-process) JAX run.

    Attributes:
      process_index: this process's rank (0 writes outputs).
      process_count: number of processes.
      local_device_count: devices attached to this process.
      device_count: devices of all processes together (what a sweep shards over).
      backend: the default backend (``cpu``, ``gpu``, ``tpu``).
    """

    process_index: int
    process_count: int
    local_device_count: int
    device_count: int
    backend: str


def info() -> DistributedInfo:
    """The current process's :class:`DistributedInfo` (initialises JAX's backend)."""
    return DistributedInfo(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        device_count=jax.device_count(),
        backend=jax.default_backend(),
    )


def initialize(
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
) -> DistributedInfo:
    """Joins this process to a multi-host JAX run (wraps :func:`jax.distributed.initialize`).

    With no arguments JAX detects the cluster (SLURM, Open MPI, Cloud TPU, GKE). Call it once
    per process before any other JAX computation; a second call returns the current state.

    Args:
      coordinator_address: ``host:port`` of process 0, reachable from every process.
      num_processes: total number of processes.
      process_id: this process's rank, ``0 <= process_id < num_processes``.
      local_device_ids: restrict this process to these local devices (e.g. one GPU each).

    Returns:
      This process's :class:`DistributedInfo`.

    Raises:
      GradjaxInputError: on inconsistent arguments.

    Example:
      On each of two machines, before any other JAX call (process 0 shown)::

          from gradjax.sweeps import distributed
          distributed.initialize(coordinator_address="10.0.0.1:1234", num_processes=2,
                                 process_id=0)
    """
    if num_processes is not None:
        check_int("num_processes", num_processes, minimum=1)
    if process_id is not None:
        maximum = None if num_processes is None else num_processes - 1
        check_int("process_id", process_id, minimum=0, maximum=maximum)
    if coordinator_address is not None and (
        not isinstance(coordinator_address, str) or ":" not in coordinator_address
    ):
        raise invalid("coordinator_address", coordinator_address, "'host:port'")
    if jax.distributed.is_initialized():
        return info()
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return info()
