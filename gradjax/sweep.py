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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax import devices as _devices
from gradjax.config import as_grid
from gradjax.errors import check_int, check_real, invalid
from gradjax.io import atomic_savez, atomic_write_json, dumps_json
from gradjax.probes import Probe, as_probe
from gradjax.tree_paths import leaf_names as _tree_leaf_names


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
        atomic_savez(directory / "arrays.npz", arrays)
        meta = {"axes": list(self.axes), "names": list(self.data), "meta": self.meta}
        atomic_write_json(directory / "meta.json", meta)
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


def leaf_names(tree: Any) -> list[str]:
    """Names of a pytree's leaves: their paths joined with ``.`` (the sweep's data keys)."""
    return _tree_leaf_names(tree, sep=".")


# ---------------------------------------------------------------------------- compiled chunks


def accepts_lazy_scales(probe: Probe) -> bool:
    """Whether ``probe`` works on lazily scaled parameters (its ``lazy_scales`` field)."""
    return as_probe(probe).lazy_scales


def _chunk_body(net: Any, probe: Probe) -> Callable:
    """``(seed keys (S,), sigma_w (P,), sigma_b (P,)) -> pytree with leading axes (S, P)``.

    For a two-part probe these are its intermediate arrays.
    """
    lazy, per_network = probe.lazy_scales, probe.per_network

    def per_seed(key, sigma_w, sigma_b):
        init_key, probe_key = jax.random.split(key)
        base = net.init_base(init_key)

        def per_scale(sw, sb):
            return per_network(net.scale(base, sigma_w=sw, sigma_b=sb, lazy=lazy), probe_key)

        return jax.vmap(per_scale)(sigma_w, sigma_b)

    return jax.vmap(per_seed, in_axes=(0, None, None))


@functools.lru_cache(maxsize=64)
def _chunk_function(net: Any, probe: Probe) -> Callable:
    """The jitted (seeds, scales) -> outputs function, cached so repeat sweeps never retrace."""
    return jax.jit(_chunk_body(net, probe))


@functools.lru_cache(maxsize=64)
def _finalize_function(probe: Probe) -> Callable | None:
    """The jitted batched ``finalize`` of a two-part probe, or ``None`` for a plain probe.

    It turns a whole chunk of intermediates (leading axes seed, scale) into the results, as
    a compiled program of its own. That is for LAPACK-bound steps such as singular values:
    jaxlib's CPU kernels spread a batch over XLA's threads only when they are started from
    outside XLA's thread pool, as the first step of a program is (see :mod:`gradjax.lapack`);
    after the per-network steps of the same program they ran on one core (measured: 0.95 s
    against 0.5 s for 2,048 SVDs of 128 x 128 on two cores).
    """
    return None if probe.finalize is None else jax.jit(probe.finalize)


def _probe_outputs(net: Any, probe: Probe) -> Callable:
    """Chunk inputs -> the probe's final outputs (for shapes; the sweep runs the two parts)."""
    fn, finalize = _chunk_function(net, probe), _finalize_function(probe)
    return fn if finalize is None else lambda *args: finalize(fn(*args))


@dataclasses.dataclass(frozen=True)
class _Sharded:
    """A chunk function partitioned over a 1-D device mesh, with its input shardings."""

    fn: Callable
    key_sharding: Any
    scale_sharding: Any


@functools.lru_cache(maxsize=64)
def _sharded_chunk_function(net: Any, probe: Probe, devices: tuple, axis: int) -> _Sharded:
    """The chunk function with the seed (``axis=0``) or scale (``axis=1``) axis split over a mesh.

    A ``shard_map``: every device runs the unsharded chunk program on its own slice, with no
    communication at all (points are independent), rather than leaving XLA's SPMD partitioner
    to split an SVD or a scan and insert collectives. Cached on (net, probe, devices, axis): a
    repeat sweep reuses the compiled executable. Keys travel as raw ``uint32`` key data,
    because a global array spanning several hosts is built from NumPy pieces
    (:func:`jax.make_array_from_callback`), which typed keys are not.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = _devices.mesh(devices, "sweep")
    body = _chunk_body(net, probe)
    finalize = probe.finalize

    def local(key_data, sigma_w, sigma_b):
        out = body(jax.random.wrap_key_data(key_data), sigma_w, sigma_b)
        # Over a mesh the post-processing stays in each device's program: no collectives.
        return out if finalize is None else finalize(out)

    key_spec = P("sweep") if axis == 0 else P()
    scale_spec = P() if axis == 0 else P("sweep")
    # One spec for every output leaf (a pytree prefix): all leaves lead with (seed, scale).
    out_spec = P("sweep") if axis == 0 else P(None, "sweep")
    mapped = _devices.shard_map(
        local,
        devices,
        in_specs=(key_spec, scale_spec, scale_spec),
        out_specs=out_spec,
        axis="sweep",
    )
    return _Sharded(jax.jit(mapped), NamedSharding(mesh, key_spec), NamedSharding(mesh, scale_spec))


# glibc's malloc hands out a block larger than its mmap threshold (dynamic, at most 32 MiB
# on 64-bit Linux) as fresh pages from the OS, returned at every free, so every call of a
# program whose output or scratch is that large faults all its pages in again. Measured on
# the 2-core development machine: 134 MB of Jacobians per chunk took 0.57 s to sweep (8
# seeds x 8 sigma_w, depth 32, width 128, exact spectra), against 0.48 s in chunks whose
# largest array stays under 32 MiB and whose memory the allocator reuses.
_CPU_REUSED_BUFFER_BYTES = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class _Linear:
    """Bytes that grow linearly with a chunk: ``seeds * (per_seed + points * per_point)``."""

    per_seed: int
    per_point: int

    def __call__(self, seeds: int, points: int) -> int:
        return seeds * (self.per_seed + points * self.per_point)

    @classmethod
    def fit(cls, one: int, two: int, shared_weights: bool) -> _Linear:
        """From a chunk of one seed with one scale (``one``) and with two (``two``)."""
        if not shared_weights:  # each point holds its own rescaled weights
            return cls(0, one)
        per_point = max(two - one, 0)
        return cls(max(one - per_point, 0), per_point)


@dataclasses.dataclass(frozen=True)
class _MemoryModel:
    """A chunk's memory: all of it (``total``), XLA's scratch buffer (``scratch``) and its
    largest output array (``largest_output``); the largest single buffer is the larger of
    the last two."""

    total: _Linear
    scratch: _Linear
    largest_output: _Linear

    def largest_buffer(self, seeds: int, points: int) -> int:
        return max(self.scratch(seeds, points), self.largest_output(seeds, points))


def _chunk_bytes(net: Any, probe: Probe, dtype_name: str, points: int) -> tuple[int, int, int]:
    """``(peak bytes, scratch bytes, largest output)`` of a chunk of one seed and ``points``
    scales, from XLA's memory analysis."""
    fn = _chunk_function(net, probe)
    key = jax.random.split(jax.random.key(0), 1)
    scale = jnp.ones((points,), dtype_name)
    out = jax.eval_shape(fn, key, scale, scale)
    sizes = [leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(out)]
    try:
        stats = fn.lower(key, scale, scale).compile().memory_analysis()
        scratch = stats.temp_size_in_bytes
        total = scratch + stats.output_size_in_bytes + stats.argument_size_in_bytes
    except Exception:  # memory analysis is optional in some backends
        total, scratch = 4 * sum(sizes), 0
    return max(int(total), 1), int(scratch), int(max(sizes))


@functools.lru_cache(maxsize=64)
def _memory_model(net: Any, probe: Probe, dtype_name: str) -> _MemoryModel:
    """Measured from two compiled chunks (one and two scales of one seed).

    The per-seed part matters for lazily scaled probes, whose seed's weights are shared by all
    its scales: counting them once per point would shrink chunks, and their matrix products,
    many times over.
    """
    shared = probe.lazy_scales
    one = _chunk_bytes(net, probe, dtype_name, 1)
    two = _chunk_bytes(net, probe, dtype_name, 2) if shared else one
    total, scratch, largest = (_Linear.fit(a, b, shared) for a, b in zip(one, two, strict=True))
    return _MemoryModel(total=total, scratch=scratch, largest_output=largest)


# ---------------------------------------------------------------------------- the sweep


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
    progress: bool | Callable[[int, int], None] | None = None,
    probe_name: str | None = None,
    devices: int | Sequence[Any] | None = None,
    out_dir: str | os.PathLike | None = None,
) -> SweepResult:
    """Runs ``probe`` on every (seed, sigma_w, sigma_b) network, vmapped, chunked and sharded.

    Each chunk of (seeds x scales) is one call of a jitted function. With several devices the
    chunk is split over a 1-D :class:`jax.sharding.Mesh` along its seed axis (its scale axis
    when a chunk has fewer seeds than devices); a chunk that does not divide the device count
    is padded by repeating its last entry, and the padding dropped. Split over seeds, each
    device runs the unsharded program on its seeds, so the numbers are bit-for-bit those of
    the unsharded sweep; split over scales they agree to float rounding.

    Across hosts, call :func:`gradjax.distributed.initialize` (which wraps
    :func:`jax.distributed.initialize`) in every process first; ``jax.devices()`` then spans
    all hosts and the same call runs the sweep on all of them, every process returning the
    whole result. See :mod:`gradjax.distributed` for the launch.

    With ``out_dir`` the sweep is resumable: every finished chunk is written atomically to
    ``out_dir/chunks/`` and recorded in ``out_dir/manifest.json``; the same call after an
    interruption loads the finished chunks and computes only the rest. A directory holding a
    different sweep (network, probe, seeds, grids, key or output layout) is refused, never
    mixed. At the end ``arrays.npz`` and ``meta.json`` are written as by
    :meth:`SweepResult.save`.

    Args:
      net: a :class:`gradjax.Net` (anything with ``init_base``, ``scale``, ``cfg``, ``dtype``).
      probe: a :class:`gradjax.probes.Probe`, or a plain function ``(params, key) -> pytree``
        (wrapped as ``Probe(per_network=fn)``); pure and jit/vmap-safe. A probe with
        ``lazy_scales=True`` gets the lazy parameters of ``net.scale(..., lazy=True)`` and
        shares each seed's weights across the scale grid; a two-part probe's ``finalize``
        runs as a compiled program of its own over each tile of intermediates.
      seeds: a count (seeds 0..n-1) or explicit seed ids.
      sigma_w: the sigma_w grid; ``None`` keeps the config's value and drops the axis.
      sigma_b: the sigma_b grid; ``None`` keeps the config's value and drops the axis.
      key: root PRNG seed; seed ``i`` uses ``fold_in(key(root), i)``.
      memory_budget_mb: points per compiled chunk are chosen so a chunk's peak memory (XLA's
        memory analysis of one point times the chunk's points, all devices together) stays
        under this budget. On a CPU a chunk also takes no more seeds than keep its largest
        array under 32 MiB, above which the C allocator maps fresh pages at every call.
      chunk: explicit ``(seeds_per_chunk, scales_per_chunk)``, overriding the budget. A resumed
        ``out_dir`` keeps the chunk layout it was started with.
      progress: ``True`` shows a progress bar over chunks (default: when there are several);
        a callable is called as ``progress(done_chunks, total_chunks)`` after each chunk.
      probe_name: recorded in the result's metadata and in the resume fingerprint (name
        probes that differ only in closed-over settings, so their directories stay apart).
      devices: ``None`` for every device of ``jax.devices()`` (all hosts; but one device for
        a single-process CPU run, whose several CPU devices would share the same cores), an
        int ``n`` for the first ``n`` devices, or an explicit sequence of devices. One device
        runs unsharded. Across hosts keep ``None`` (or a list holding devices of every
        process). Several CPU devices in one process calling LAPACK at once (the SVD) can
        deadlock in a multi-threaded OpenBLAS; set ``OPENBLAS_NUM_THREADS=1`` for that.
      out_dir: directory for resumable output (created if missing).

    Returns:
      A :class:`SweepResult` with axes ``("seed", "sigma_w"[, "sigma_b"])``.

    Raises:
      GradjaxInputError: on bad arguments, or when ``out_dir`` holds a different sweep.

    Example:
      >>> import gradjax as gj
      >>> net = gj.build(gj.NetConfig(depth=16, width=64, activation="tanh"))
      >>> res = gj.sweep(net, gj.probes.gradient_probe(net), seeds=4, sigma_w=[0.5, 1.0, 2.0])
      >>> res["weights"].shape  # (seed, sigma_w, layer)
      (4, 3, 16)
    """
    probe = as_probe(probe)
    grid = _make_grid(net, seeds, sigma_w, sigma_b, memory_budget_mb)
    device_list = _devices.select_devices(devices)
    if chunk is not None:
        chunk = _check_chunk(chunk)
    root = jax.random.key(key)
    seed_keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(grid.seed_ids))
    dtype = net.dtype
    out_shape = jax.eval_shape(
        _probe_outputs(net, probe), seed_keys[:1], jnp.ones((1,), dtype), jnp.ones((1,), dtype)
    )
    names = leaf_names(out_shape)
    leaves_shape = jax.tree.leaves(out_shape)
    probe_label = probe_name or getattr(probe.per_network, "__qualname__", "probe")
    n_seed, n_scale = len(grid.seed_ids), len(grid.sigma_w)

    store = None
    layout = None
    if out_dir is not None:
        fingerprint = _fingerprint(net, probe_label, key, grid, names, leaves_shape)
        store = _ChunkStore.open(Path(out_dir), fingerprint)
        layout = store.layout
    if layout is None:
        layout = _choose_layout(net, probe, n_seed, n_scale, device_list, memory_budget_mb, chunk)
    if store is not None:
        store.start(layout)
    seed_chunk, scale_chunk = layout
    axis = _shard_axis(seed_chunk, scale_chunk, len(device_list))
    runner = _Runner(net, probe, device_list, axis, seed_chunk, scale_chunk, seed_keys, dtype)

    buffers = [np.empty((n_seed, n_scale, *leaf.shape[2:]), leaf.dtype) for leaf in leaves_shape]
    ranges = [
        (s0, min(s0 + seed_chunk, n_seed), p0, min(p0 + scale_chunk, n_scale))
        for s0 in range(0, n_seed, seed_chunk)
        for p0 in range(0, n_scale, scale_chunk)
    ]
    done = store.finished(ranges) if store is not None else [False] * len(ranges)
    with _devices.Progress(progress, len(ranges), desc="sweep", unit="chunk") as bar:
        for index, (bounds, finished) in enumerate(zip(ranges, done, strict=True)):
            leaves = store.load(bounds, names, buffers) if finished else None
            if leaves is None:
                leaves = runner(bounds, grid.sigma_w, grid.sigma_b)
                if store is not None:
                    store.save(bounds, names, leaves)
            s0, s1, p0, p1 = bounds
            for buf, leaf in zip(buffers, leaves, strict=True):
                buf[s0:s1, p0:p1] = leaf
            bar.update(index + 1)

    grid_shape = tuple(len(grid.coords[a]) for a in grid.axes[1:])
    data = {
        name: buf.reshape(n_seed, *grid_shape, *buf.shape[2:])
        for name, buf in zip(names, buffers, strict=True)
    }
    meta = {
        "net": config_to_dict(net.cfg),
        "probe": probe_label,
        "key": int(key),
        "fixed": grid.fixed,
        "chunk": [seed_chunk, scale_chunk],
        "devices": len(device_list),
        "shard_axis": None if len(device_list) == 1 else ("seed", "scale")[axis],
    }
    result = SweepResult(data=data, axes=grid.axes, coords=grid.coords, meta=meta)
    if store is not None:
        store.finish(result)
    return result


# ---------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class _Grid:
    seed_ids: np.ndarray
    sigma_w: np.ndarray  # flattened scale grid, one entry per scale point
    sigma_b: np.ndarray
    axes: tuple[str, ...]
    coords: dict[str, np.ndarray]
    fixed: dict[str, float]


def _make_grid(net, seeds, sigma_w, sigma_b, memory_budget_mb) -> _Grid:
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
    return _Grid(seed_ids, sw.ravel(), sb.ravel(), tuple(axes), coords, fixed)


def _check_chunk(chunk: Any) -> tuple[int, int]:
    try:
        size = len(chunk)
    except TypeError:
        size = -1
    if size != 2:
        raise invalid("chunk", chunk, "(seeds_per_chunk, scales_per_chunk)")
    check_int("chunk[0]", chunk[0], minimum=1)
    check_int("chunk[1]", chunk[1], minimum=1)
    return int(chunk[0]), int(chunk[1])


def _choose_layout(net, probe, n_seed, n_scale, devices, memory_budget_mb, chunk):
    """``(seeds_per_chunk, scales_per_chunk)`` from an explicit chunk or the memory budget.

    A seed's whole scale grid goes in one chunk when the budget allows (splitting it draws the
    seed's weights again); as many seeds join it as the budget allows, and on a CPU only as
    many as keep the chunk's largest array under ``_CPU_REUSED_BUFFER_BYTES``.
    """
    if chunk is not None:
        return min(chunk[0], n_seed), min(chunk[1], n_scale)
    model = _memory_model(net, probe, str(net.dtype))
    total = model.total
    # The budget covers a whole chunk, all devices together: conservative on accelerators,
    # and exactly right for CPU devices, which share the host's memory.
    budget = memory_budget_mb * 2**20
    scale_chunk = min(n_scale, max(1, int((budget - total.per_seed) // max(total.per_point, 1))))
    seed_chunk = max(1, min(n_seed, int(budget // max(total(1, scale_chunk), 1))))
    if all(d.platform == "cpu" for d in devices):
        largest = model.largest_buffer(1, scale_chunk)
        seed_chunk = max(1, min(seed_chunk, _CPU_REUSED_BUFFER_BYTES // max(largest, 1)))
    n_dev = len(devices)
    if n_dev < seed_chunk < n_seed:
        seed_chunk -= seed_chunk % n_dev  # whole seeds per device: no padding in full chunks
    return seed_chunk, scale_chunk


def _shard_axis(seed_chunk: int, scale_chunk: int, n_dev: int) -> int:
    """The chunk axis to split over devices: 0 (seeds) unless too few seeds, then 1 (scales).

    Splitting seeds leaves each device the very program of an unsharded chunk with fewer seeds,
    and XLA's numbers for a seed do not depend on how many seeds share the batch, so the
    result is bit-for-bit the unsharded one. A chunk with fewer seeds than devices would leave
    devices idle; then the scale axis is split if it is longer. Batching fewer scales per
    device changes XLA's kernels, so those numbers agree with the unsharded ones to float
    rounding (a few ulp), not bit for bit.
    """
    if seed_chunk < n_dev and scale_chunk > seed_chunk:
        return 1
    return 0


class _Runner:
    """Computes one chunk, unsharded or over the mesh, and returns its leaves as NumPy."""

    def __init__(self, net, probe, devices, axis, seed_chunk, scale_chunk, seed_keys, dtype):
        self.n_dev = len(devices)
        self.dtype = dtype
        self.axis = axis
        self.seed_keys = seed_keys
        self.seed_size, self.scale_size = seed_chunk, scale_chunk
        self.finalize = _finalize_function(probe)
        if self.n_dev == 1:
            self.fn = _chunk_function(net, probe)
            self.sharded = None
        else:
            self.sharded = _sharded_chunk_function(net, probe, tuple(devices), axis)
            # Pad the split axis to a multiple of the device count.
            up = lambda n: math.ceil(n / self.n_dev) * self.n_dev
            if axis == 0:
                self.seed_size = up(seed_chunk)
            else:
                self.scale_size = up(scale_chunk)
            self.key_data = np.asarray(jax.random.key_data(seed_keys))

    def __call__(self, bounds, sigma_w: np.ndarray, sigma_b: np.ndarray) -> list[np.ndarray]:
        s0, s1, p0, p1 = bounds
        sw = _pad(np.asarray(sigma_w[p0:p1], self.dtype), self.scale_size)
        sb = _pad(np.asarray(sigma_b[p0:p1], self.dtype), self.scale_size)
        if self.sharded is None:
            keys = self.seed_keys[s0:s1]
            if keys.shape[0] < self.seed_size:
                keys = jnp.concatenate(
                    [keys, jnp.repeat(keys[-1:], self.seed_size - keys.shape[0], axis=0)]
                )
            out = self.fn(keys, jnp.asarray(sw), jnp.asarray(sb))
            if self.finalize is not None:
                out = self.finalize(out)
            leaves = [np.asarray(x) for x in jax.tree.leaves(out)]
        else:
            keys = _pad(self.key_data[s0:s1], self.seed_size)
            out = self.sharded.fn(
                _devices.put_global(keys, self.sharded.key_sharding),
                _devices.put_global(sw, self.sharded.scale_sharding),
                _devices.put_global(sb, self.sharded.scale_sharding),
            )
            leaves = [_devices.to_host(x) for x in jax.tree.leaves(out)]
        return [leaf[: s1 - s0, : p1 - p0] for leaf in leaves]


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Pads the leading axis to ``size`` by repeating the last entry (dropped afterwards)."""
    missing = size - x.shape[0]
    if missing == 0:
        return x
    return np.concatenate([x, np.repeat(x[-1:], missing, axis=0)], axis=0)


# ---------------------------------------------------------------------------- resumable output

_FORMAT = "gradjax-sweep/1"


def _fingerprint(net, probe_label, key, grid: _Grid, names, leaves_shape) -> dict[str, Any]:
    """What makes two sweeps the same sweep: everything that decides the numbers."""
    fp = {
        "format": _FORMAT,
        "net": config_to_dict(net.cfg),
        "probe": probe_label,
        "key": int(key),
        "axes": list(grid.axes),
        "seeds": [int(s) for s in grid.seed_ids],
        "sigma_w": [float(v) for v in grid.sigma_w],
        "sigma_b": [float(v) for v in grid.sigma_b],
        "outputs": {
            name: [list(leaf.shape[2:]), str(leaf.dtype)]
            for name, leaf in zip(names, leaves_shape, strict=True)
        },
    }
    # Normalise through JSON (tuples become lists) so it compares equal to what is on disk.
    return json.loads(dumps_json(fp))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old == new:
        return []
    name = prefix[:-1]
    if isinstance(old, list) or isinstance(new, list):
        return [name]
    return [f"{name} ({old!r} on disk, {new!r} now)"]


class _ChunkStore:
    """The resumable directory: ``manifest.json`` plus one ``chunks/*.npz`` per finished chunk.

    Only process 0 writes (one writer, so multi-host runs need a shared filesystem); which
    chunks are finished is decided on process 0 and broadcast, so every process computes the
    same chunks in the same order.
    """

    def __init__(self, directory: Path, fingerprint: dict, manifest: dict | None):
        self.directory = directory
        self.fingerprint = fingerprint
        self.manifest = manifest
        self.writer = jax.process_index() == 0

    @classmethod
    def open(cls, directory: Path, fingerprint: dict) -> _ChunkStore:
        path = directory / "manifest.json"
        manifest = None
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
                old = manifest["fingerprint"]
            except (ValueError, KeyError, TypeError):
                raise invalid(
                    "out_dir",
                    str(directory),
                    "a directory without a manifest.json or with a valid one (it is unreadable)",
                ) from None
            diff = _differences(old, fingerprint)
            if diff:
                raise invalid(
                    "out_dir",
                    str(directory),
                    "a new directory or one holding this same sweep; it holds a different "
                    f"sweep (differs in {'; '.join(diff[:6])}{'; ...' if len(diff) > 6 else ''})"
                    " - use another directory or delete it",
                )
        else:
            try:
                directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise invalid("out_dir", str(directory), "a writable directory") from err
        return cls(directory, fingerprint, manifest)

    @property
    def layout(self) -> tuple[int, int] | None:
        if self.manifest is None:
            return None
        return tuple(self.manifest["chunk"])

    def start(self, layout: tuple[int, int]) -> None:
        if self.manifest is None:
            self.manifest = {
                "format": _FORMAT,
                "fingerprint": self.fingerprint,
                "chunk": list(layout),
                "finished": [],
                "complete": False,
            }
            self._write_manifest()

    @staticmethod
    def _name(bounds) -> str:
        s0, s1, p0, p1 = bounds
        return f"seed{s0:06d}-{s1:06d}_scale{p0:07d}-{p1:07d}.npz"

    def finished(self, ranges) -> list[bool]:
        listed = set(self.manifest["finished"])
        mask = np.array(
            [
                self._name(b) in listed and (self.directory / "chunks" / self._name(b)).exists()
                for b in ranges
            ],
            dtype=bool,
        )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
        return [bool(m) for m in mask]

    def load(self, bounds, names, buffers) -> list[np.ndarray] | None:
        """A finished chunk's leaves, or ``None`` (recompute) when the file is not usable."""
        s0, s1, p0, p1 = bounds
        try:
            with np.load(self.directory / "chunks" / self._name(bounds)) as npz:
                leaves = [npz[name] for name in names]
        except (OSError, KeyError, ValueError):
            return None
        for leaf, buf in zip(leaves, buffers, strict=True):
            if leaf.shape != (s1 - s0, p1 - p0, *buf.shape[2:]) or leaf.dtype != buf.dtype:
                return None
        return leaves

    def save(self, bounds, names, leaves) -> None:
        if not self.writer:
            return
        chunks = self.directory / "chunks"
        chunks.mkdir(exist_ok=True)
        arrays = dict(zip(names, leaves, strict=True))
        atomic_savez(chunks / self._name(bounds), arrays)
        # The chunk is on disk before the manifest names it, so a listed chunk always exists.
        finished = self.manifest["finished"]
        if self._name(bounds) not in finished:
            finished.append(self._name(bounds))
        self._write_manifest()

    def finish(self, result: SweepResult) -> None:
        if not self.writer:
            return
        result.save(self.directory)
        self.manifest["complete"] = True
        self._write_manifest()

    def _write_manifest(self) -> None:
        if self.writer:
            atomic_write_json(self.directory / "manifest.json", self.manifest)


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
