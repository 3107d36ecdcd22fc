"""Timing, machine facts and the JSON record shared by every benchmark.

Timings exclude compilation (one warm-up call first), wait for the result with
``block_until_ready`` and keep the median of several repeats. Nothing here sets a thread
count or an environment variable: the record's ``machine.threads`` says what the benchmark
found (:func:`gradjax.utils.threads.settings`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from gradjax.utils import threads
from gradjax.utils.files import atomic_write_json


def block(tree: Any) -> Any:
    """Waits for every array in ``tree`` (JAX dispatch is asynchronous)."""
    return jax.block_until_ready(tree)


def time_fn(
    fn: Callable[[], Any],
    *,
    repeats: int = 5,
    warmup: int = 1,
    min_repeats: int = 1,
    budget_s: float | None = None,
) -> dict[str, float]:
    """Times ``fn()`` after ``warmup`` calls; returns median/min/max seconds and the count.

    Args:
      fn: a function of no arguments; its result is blocked on.
      repeats: timed calls.
      warmup: untimed calls first (compilation, caches).
      min_repeats: repeats kept even when ``budget_s`` runs out.
      budget_s: stop repeating once this much time has been spent (at least ``min_repeats``).

    Returns:
      ``{"median", "min", "max", "repeats"}``.
    """
    for _ in range(warmup):
        block(fn())
    times: list[float] = []
    spent = 0.0
    for i in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if budget_s is not None and spent > budget_s and i + 1 >= min_repeats:
            break
    return {
        "median": statistics.median(times),
        "min": min(times),
        "max": max(times),
        "repeats": len(times),
    }


def machine_info() -> dict[str, Any]:
    """CPU count, JAX version, backend, devices and thread settings of this run."""
    devices = jax.devices()
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": len(devices),
        "device_kind": devices[0].device_kind,
        "threads": threads.settings(),
    }


def matmul_peak_flops(n: int = 2048, dtype: Any = jnp.float32, repeats: int = 5) -> float:
    """Measured FLOP/s of a large square matmul: the machine's practical peak, this run.

    Args:
      n: matrix size.
      dtype: element type.
      repeats: timed repeats.

    Returns:
      ``2 n^3 / median seconds``.
    """
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.matmul)
    t = time_fn(lambda: f(a, b), repeats=repeats)
    return 2.0 * n**3 / t["median"]


def record(
    name: str,
    *,
    config: dict[str, Any],
    timings: dict[str, dict[str, float]],
    ratios: dict[str, float],
    targets: dict[str, str],
    accuracy: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds the benchmark JSON record and marks each target as met or not.

    Targets are strings like ``">= 15"`` or ``"<= 1.3"`` or ``"report"``; each key is looked up
    in ``ratios`` then ``accuracy``.
    """
    accuracy = accuracy or {}
    met = {}
    for key, target in targets.items():
        value = ratios.get(key, accuracy.get(key))
        met[key] = _meets(value, target)
    out = {
        "name": name,
        "config": config,
        "machine": machine_info(),
        "timings_s": timings,
        "ratios": ratios,
        "accuracy": accuracy,
        "targets": targets,
        "targets_met": met,
    }
    if extra:
        out.update(extra)
    return out


def _meets(value: float | None, target: str) -> bool | None:
    if value is None or not isinstance(target, str):
        return None
    parts = target.split()
    if len(parts) != 2 or parts[0] not in (">=", "<=", "~"):
        return None
    bound = float(parts[1])
    if parts[0] == ">=":
        return bool(value >= bound)
    if parts[0] == "<=":
        return bool(value <= bound)
    return bool(abs(value - bound) <= 0.5)


def write(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Writes ``out_dir/<name>.json`` atomically (NaN/inf as strings, valid JSON)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(out_dir / f"{result['name']}.json", result)
