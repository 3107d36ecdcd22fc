"""The sweep engine: any probe, vmapped over seeds x sigma_w (x sigma_b), chunked.

The engine knows networks only through ``net.init_base(key)`` and
``net.scale(base, sigma_w=..., sigma_b=...)`` and knows nothing of the diagnostics: they are
probes, ``probe(params, key) -> pytree``, handed to it. Base parameters are drawn once per seed
and only rescaled along the scale axes (common random numbers), and every scale of a seed gets
the same probe key, so differences along a scale axis are the scale's effect, not noise.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.config import as_grid
from gradjax.errors import check_int, check_real, invalid

Probe = Callable[[Any, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Arrays with named leading axes and their coordinates.

    Attributes:
      data: leaf name (probe pytree path joined with ``.``) -> array whose leading axes are
        ``axes`` and whose trailing axes are the probe's own (e.g. the layer axis).
      axes: names of the sweep axes, e.g. ``("seed", "sigma_w")``.
      coords: axis name -> coordinate values.
      meta: JSON-safe description (network config, probe name, root key, fixed scales).
    """

    data: dict[str, np.ndarray]
    axes: tuple[str, ...]
    coords: dict[str, np.ndarray]
    meta: dict[str, Any]

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.data:
            raise KeyError(f"{name!r} is not in this sweep; names: {', '.join(self.data)}")
        return self.data[name]

    def names(self) -> tuple[str, ...]:
        """The leaf names."""
        return tuple(self.data)

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``arrays.npz`` and ``meta.json`` (no pickle) atomically into ``directory``.

        Returns:
          The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"data.{k}": v for k, v in self.data.items()}
        arrays.update({f"coord.{k}": v for k, v in self.coords.items()})
        _atomic_write(directory / "arrays.npz", lambda f: np.savez(f, **arrays), binary=True)
        meta = {"axes": list(self.axes), "names": list(self.data), "meta": self.meta}
        _atomic_write(directory / "meta.json", lambda f: json.dump(meta, f, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SweepResult:
        """Reads a result written by :meth:`save`."""
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
            data = {k: npz[f"data.{k}"] for k in meta["names"]}
            coords = {k: npz[f"coord.{k}"] for k in meta["axes"]}
        return cls(data=data, axes=tuple(meta["axes"]), coords=coords, meta=meta["meta"])


def _atomic_write(path: Path, write: Callable[[Any], None], binary: bool = False) -> None:
    # Write to a temporary file in the same directory, then rename: readers never see a
    # half-written file, and an interrupted run leaves the old file intact.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def leaf_names(tree: Any) -> list[str]:
    """Names of a pytree's leaves: their paths joined with ``.``."""
    paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [".".join(_key_name(k) for k in path) or "value" for path, _ in paths]


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


@dataclasses.dataclass(frozen=True)
class _Plan:
    seed_ids: np.ndarray
    sigma_w: np.ndarray  # flattened scale grid
    sigma_b: np.ndarray
    seed_chunk: int
    scale_chunk: int


@functools.lru_cache(maxsize=64)
def _chunk_function(net: Any, probe: Probe) -> Callable:
    """The jitted (seeds, scales) -> outputs function, cached so repeat sweeps never retrace."""

    def per_seed(key, sigma_w, sigma_b):
        init_key, probe_key = jax.random.split(key)
        base = net.init_base(init_key)

        def per_scale(sw, sb):
            return probe(net.scale(base, sigma_w=sw, sigma_b=sb), probe_key)

        return jax.vmap(per_scale)(sigma_w, sigma_b)

    return jax.jit(jax.vmap(per_seed, in_axes=(0, None, None)))


@functools.lru_cache(maxsize=64)
def _bytes_per_point(net: Any, probe: Probe, dtype_name: str) -> int:
    """Peak bytes of one (seed, scale) point, from XLA's memory analysis of a compiled point."""
    fn = _chunk_function(net, probe)
    key = jax.random.split(jax.random.key(0), 1)
    scale = jnp.ones((1,), dtype_name)
    try:
        stats = fn.lower(key, scale, scale).compile().memory_analysis()
        total = stats.temp_size_in_bytes + stats.output_size_in_bytes
        total += stats.argument_size_in_bytes
    except Exception:  # memory analysis is optional in some backends
        out = jax.eval_shape(fn, key, scale, scale)
        total = 4 * sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(out))
    return max(int(total), 1)


def sweep(
    net: Any,
    probe: Probe,
    *,
    seeds: int | Sequence[int] = 8,
    sigma_w: float | Sequence[float] | np.ndarray | None = None,
    sigma_b: float | Sequence[float] | np.ndarray | None = None,
    key: int = 0,
    memory_budget_mb: float = 1024.0,
    chunk: tuple[int, int] | None = None,
    progress: bool | None = None,
    probe_name: str | None = None,
) -> SweepResult:
    """Runs ``probe`` on every (seed, sigma_w, sigma_b) network, vmapped and chunked.

    Args:
      net: a :class:`gradjax.Net` (anything with ``init_base``, ``scale``, ``cfg``, ``dtype``).
      probe: ``probe(params, key) -> pytree of arrays``, pure and jit/vmap-safe.
      seeds: a count (seeds 0..n-1) or explicit seed ids.
      sigma_w: the sigma_w grid; ``None`` keeps the config's value and drops the axis.
      sigma_b: the sigma_b grid; ``None`` keeps the config's value and drops the axis.
      key: root PRNG seed; seed ``i`` uses ``fold_in(key(root), i)``.
      memory_budget_mb: points per compiled chunk are chosen so a chunk's peak memory (from
        XLA's memory analysis of one point) stays under this budget.
      chunk: explicit ``(seeds_per_chunk, scales_per_chunk)``, overriding the budget.
      progress: show a progress bar over chunks (default: when there are several chunks).
      probe_name: recorded in the result's metadata.

    Returns:
      A :class:`SweepResult` with axes ``("seed", "sigma_w"[, "sigma_b"])``.

    Example:
      >>> import gradjax as gj
      >>> net = gj.build(gj.NetConfig(depth=16, width=64, activation="tanh"))
      >>> res = gj.sweep(net, gj.probes.gradient_probe(net), seeds=4, sigma_w=[0.5, 1.0, 2.0])
      >>> res["weights"].shape  # (seed, sigma_w, layer)
      (4, 3, 16)
    """
    plan, axes, coords, fixed = _make_plan(net, seeds, sigma_w, sigma_b, memory_budget_mb, probe,
                                           chunk)
    fn = _chunk_function(net, probe)
    root = jax.random.key(key)
    seed_keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(plan.seed_ids))
    dtype = net.dtype
    out_shape = jax.eval_shape(
        fn, seed_keys[:1], jnp.ones((1,), dtype), jnp.ones((1,), dtype)
    )
    names = leaf_names(out_shape)
    n_seed, n_scale = len(plan.seed_ids), len(plan.sigma_w)
    buffers = [
        np.empty((n_seed, n_scale, *leaf.shape[2:]), leaf.dtype)
        for leaf in jax.tree.leaves(out_shape)
    ]
    for (s0, s1, p0, p1), leaves in _run_chunks(fn, plan, seed_keys, dtype, progress):
        for buf, leaf in zip(buffers, leaves, strict=True):
            buf[s0:s1, p0:p1] = leaf[: s1 - s0, : p1 - p0]
    grid_shape = tuple(len(coords[a]) for a in axes[1:])
    data = {
        name: buf.reshape(n_seed, *grid_shape, *buf.shape[2:])
        for name, buf in zip(names, buffers, strict=True)
    }
    meta = {
        "net": config_to_dict(net.cfg),
        "probe": probe_name or getattr(probe, "__qualname__", "probe"),
        "key": int(key),
        "fixed": fixed,
        "chunk": [plan.seed_chunk, plan.scale_chunk],
    }
    return SweepResult(data=data, axes=axes, coords=coords, meta=meta)


def _make_plan(net, seeds, sigma_w, sigma_b, memory_budget_mb, probe, chunk):
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_int("seeds", seeds, minimum=1)
        seed_ids = np.arange(seeds)
    else:
        seed_ids = np.asarray(list(seeds))
        if seed_ids.ndim != 1 or seed_ids.size == 0 or seed_ids.dtype.kind not in "iu":
            raise invalid("seeds", seeds, "a count >= 1 or a non-empty list of integer seed ids")
    check_real("memory_budget_mb", memory_budget_mb, strictly_positive=True)
    axes, coords, fixed = ["seed"], {"seed": seed_ids}, {}
    grids = {}
    for name, values, default in (
        ("sigma_w", sigma_w, net.cfg.sigma_w),
        ("sigma_b", sigma_b, net.cfg.sigma_b),
    ):
        if values is None:
            grids[name] = np.array([default], np.float64)
            fixed[name] = float(default)
        else:
            grids[name] = as_grid(name, values)
            axes.append(name)
            coords[name] = grids[name]
    sw, sb = np.meshgrid(grids["sigma_w"], grids["sigma_b"], indexing="ij")
    sw, sb = sw.ravel(), sb.ravel()
    if chunk is not None:
        if len(chunk) != 2:
            raise invalid("chunk", chunk, "(seeds_per_chunk, scales_per_chunk)")
        check_int("chunk[0]", chunk[0], minimum=1)
        check_int("chunk[1]", chunk[1], minimum=1)
        seed_chunk, scale_chunk = min(chunk[0], len(seed_ids)), min(chunk[1], len(sw))
    else:
        per_point = _bytes_per_point(net, probe, str(net.dtype))
        points = max(1, int(memory_budget_mb * 2**20 // per_point))
        scale_chunk = min(len(sw), points)
        seed_chunk = max(1, min(len(seed_ids), points // scale_chunk))
    plan = _Plan(seed_ids, sw, sb, seed_chunk, scale_chunk)
    return plan, tuple(axes), coords, fixed


def _run_chunks(
    fn: Callable, plan: _Plan, seed_keys: jax.Array, dtype: Any, progress: bool | None
) -> Iterator[tuple[tuple[int, int, int, int], list[np.ndarray]]]:
    """Yields ``((s0, s1, p0, p1), leaves)`` chunk by chunk.

    Every chunk is padded to the full chunk size (repeating its last entry) so the jitted
    function compiles once; the caller drops the padding.
    """
    n_seed, n_scale = len(plan.seed_ids), len(plan.sigma_w)
    seed_starts = range(0, n_seed, plan.seed_chunk)
    scale_starts = range(0, n_scale, plan.scale_chunk)
    total = len(seed_starts) * len(scale_starts)
    show = total > 1 if progress is None else progress
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="sweep", unit="chunk", leave=False)
    sw_all = jnp.asarray(plan.sigma_w, dtype)
    sb_all = jnp.asarray(plan.sigma_b, dtype)
    try:
        for s0 in seed_starts:
            s1 = min(s0 + plan.seed_chunk, n_seed)
            keys = _pad(seed_keys[s0:s1], plan.seed_chunk)
            for p0 in scale_starts:
                p1 = min(p0 + plan.scale_chunk, n_scale)
                out = fn(keys, _pad(sw_all[p0:p1], plan.scale_chunk),
                         _pad(sb_all[p0:p1], plan.scale_chunk))
                yield (s0, s1, p0, p1), [np.asarray(x) for x in jax.tree.leaves(out)]
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def _pad(x: jax.Array, size: int) -> jax.Array:
    missing = size - x.shape[0]
    if missing == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], missing, axis=0)], axis=0)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-safe dict of a config dataclass (callables by name)."""
    out = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if callable(value):
            value = getattr(value, "__name__", "custom")
        elif isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[field.name] = value
    return out
