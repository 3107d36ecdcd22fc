"""The sweep engine: any probe, vmapped over seeds x sigma_w (x sigma_b), chunked.

The engine knows networks only through ``net.init_base(key)`` and
``net.scale(base, sigma_w=..., sigma_b=...)`` and knows nothing of the diagnostics: they are
probes (:class:`gradjax.measure.probes.Probe`), handed to it. Base parameters are drawn once per
seed
and only rescaled along the scale axes (common random numbers), and every scale of a seed gets
the same probe key, so differences along a scale axis are the scale's effect, not noise. Seed
``i`` draws from ``fold_in(key(root), i)`` alone, and every grid point runs through the same
compiled tile programs, so its numbers do not depend on chunks, devices or resumes. Devices
come from :mod:`gradjax.sweeps.devices`, sizes are checked by :mod:`gradjax.sweeps.cost` and the
resumable
directory is :mod:`gradjax.sweeps.store`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradjax.measure.probes import Probe, as_probe
from gradjax.nets.config import NetConfig, as_grid
from gradjax.sweeps import cost
from gradjax.sweeps import devices as _devices
from gradjax.sweeps import store as store_lib
from gradjax.utils import interrupts, threads
from gradjax.utils.errors import check_int, check_real, invalid
from gradjax.utils.files import atomic_savez, atomic_write_json
from gradjax.utils.tree_paths import leaf_names as _tree_leaf_names


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

    def to_xarray(self) -> Any:
        """The result as an ``xarray.Dataset`` (dims ``seed``, ``sigma_w``, ..., ``block``
        with block names; the config in ``attrs``): :func:`gradjax.utils.labelled.sweep_dataset`.
        """
        from gradjax.utils.labelled import sweep_dataset

        return sweep_dataset(self)

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
        """Reads a result written by :meth:`save` (or a finished sweep's ``out_dir``).

        Raises:
          GradjaxInputError: naming the directory, when it holds no readable sweep result.
        """
        directory = Path(directory)
        store_lib.check_result_dir(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text())
            with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
                data = {k: npz[f"data.{k}"] for k in meta["names"]}
                coords = {k: npz[f"coord.{k}"] for k in meta["axes"]}
            return cls(data=data, axes=tuple(meta["axes"]), coords=coords, meta=meta["meta"])
        except Exception as err:  # any damage or a different kind of file: one line
            raise invalid(
                "directory",
                str(directory),
                f"a saved sweep result; its meta.json/arrays.npz do not read as one "
                f"({type(err).__name__})",
            ) from None


def leaf_names(tree: Any) -> list[str]:
    """Names of a pytree's leaves: their paths joined with ``.`` (the sweep's data keys)."""
    return _tree_leaf_names(tree, sep=".")


# ---------------------------------------------------------------------------- compiled tiles
#
# The unit of computation is a *tile*: one seed and a fixed number of consecutive grid points
# (``_tile_scales``, chosen from the network, the probe and the grid size only). Every tile
# runs the same compiled programs, on one device or on each device of a mesh, so a grid
# point's numbers are bit for bit the same however the sweep is cut into chunks, over however
# many devices, and across resumes: XLA's kernels (a matrix product over the points of a tile,
# a batched SVD) may round differently at another batch size, and in chaotic networks such
# rounding differences grow to percents in gradient norms and to orders of magnitude in
# condition numbers.


def _tile_body(net: Any, probe: Probe) -> Callable:
    """``(seed key data (S,), sigma_w (S, P), sigma_b (S, P)) -> pytree, leading (S, P)``.

    For a two-part probe these are its intermediate arrays. Keys travel as raw ``uint32`` key
    data, because a global array spanning several hosts is built from NumPy pieces
    (:func:`jax.make_array_from_callback`), which typed keys are not.
    """
    lazy, per_network = probe.lazy_scales, probe.per_network

    def per_seed(key_data, sigma_w, sigma_b):
        init_key, probe_key = jax.random.split(jax.random.wrap_key_data(key_data))
        base = net.init_base(init_key)

        def per_scale(sw, sb):
            return per_network(net.scale(base, sigma_w=sw, sigma_b=sb, lazy=lazy), probe_key)

        return jax.vmap(per_scale)(sigma_w, sigma_b)

    return jax.vmap(per_seed)


@functools.lru_cache(maxsize=64)
def _tile_function(net: Any, probe: Probe) -> Callable:
    """The jitted tile function, cached so repeat sweeps never retrace."""
    return jax.jit(_tile_body(net, probe))


@functools.lru_cache(maxsize=64)
def _finalize_function(probe: Probe) -> Callable | None:
    """The jitted ``finalize`` of a two-part probe over a tile, or ``None``.

    A compiled program of its own, for LAPACK-bound steps such as singular values: jaxlib's
    CPU kernels spread a batch over XLA's threads only when they are the first step of a
    program (see :mod:`gradjax.utils.lapack`).
    """
    return None if probe.finalize is None else jax.jit(probe.finalize)


def _probe_outputs(net: Any, probe: Probe) -> Callable:
    """Tile inputs -> the probe's final outputs (for shapes; the sweep runs the two parts)."""
    fn, finalize = _tile_function(net, probe), _finalize_function(probe)
    return fn if finalize is None else lambda *args: finalize(fn(*args))


@dataclasses.dataclass(frozen=True)
class _Sharded:
    """The tile programs mapped over a 1-D mesh, one tile per device, and the input sharding."""

    fn: Callable
    finalize: Callable | None
    sharding: Any


@functools.lru_cache(maxsize=64)
def _sharded_functions(net: Any, probe: Probe, devices: tuple) -> _Sharded:
    """The tile programs as ``shard_map`` s over ``devices``: each device runs one tile.

    Each device runs the very programs of an unsharded tile on its own tile, with no
    communication (grid points are independent), so the numbers are those of one device.
    Cached on (net, probe, devices): a repeat sweep reuses the compiled executables.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    spec = P("sweep")
    body = _devices.shard_map(
        _tile_body(net, probe), devices, in_specs=spec, out_specs=spec, axis="sweep"
    )
    finalize = None
    if probe.finalize is not None:
        finalize = jax.jit(
            _devices.shard_map(probe.finalize, devices, in_specs=spec, out_specs=spec, axis="sweep")
        )
    sharding = NamedSharding(_devices.mesh(devices, "sweep"), spec)
    return _Sharded(jax.jit(body), finalize, sharding)


# glibc's malloc hands out a block larger than its mmap threshold (dynamic, at most 32 MiB
# on 64-bit Linux) as fresh pages from the OS, returned at every free, so every call of a
# program whose output or scratch is that large faults all its pages in again: on a CPU a
# tile's largest array stays under this size.
_CPU_REUSED_BUFFER_BYTES = 32 * 2**20
# A tile's peak memory stays under this (and at least one grid point per tile): small enough
# for any device, large enough that a tile's matrix products are matrix-matrix products.
_TILE_BYTES = 256 * 2**20


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
    """``(peak bytes, scratch bytes, largest output)`` of a tile of one seed and ``points``
    scales, from XLA's memory analysis."""
    fn = _tile_function(net, probe)
    key = jax.random.key_data(jax.random.split(jax.random.key(0), 1))
    scale = jnp.ones((1, points), dtype_name)
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
    memory_budget_mb: float | None = None,
    chunk: tuple[int, int] | None = None,
    progress: bool | Callable[[int, int], None] | None = None,
    probe_name: str | None = None,
    devices: int | Sequence[Any] | None = None,
    out_dir: str | os.PathLike | None = None,
) -> SweepResult:
    """Runs ``probe`` on every (seed, sigma_w, sigma_b) network, vmapped, chunked and sharded.

    The work runs in tiles of one seed and a fixed number of grid points (padded by repeating
    the last point, the padding dropped), each tile one call of the same jitted program (and
    of the probe's jitted ``finalize``). With several devices every device runs one tile at a
    time, through a ``shard_map`` over a 1-D :class:`jax.sharding.Mesh`. A grid point's numbers
    are therefore bit for bit the same under any memory budget, chunk layout, device count or
    resume.

    Across hosts, call :func:`gradjax.sweeps.distributed.initialize` (which wraps
    :func:`jax.distributed.initialize`) in every process first; ``jax.devices()`` then spans
    all hosts and the same call runs the sweep on all of them, every process returning the
    whole result. See :mod:`gradjax.sweeps.distributed` for the launch.

    With ``out_dir`` the sweep is resumable (see :mod:`gradjax.sweeps.store`): every finished chunk
    is
    written atomically to ``out_dir/chunks/``, named by its SHA-256; the same call after an
    interruption loads the finished chunks that pass their checks and computes the rest. A
    directory holding a different sweep (network, probe, seeds, grids, key or output layout)
    or other files is refused, never mixed; one run at a time writes it (a lock). At the end
    ``arrays.npz`` and ``meta.json`` are written as by :meth:`SweepResult.save`.

    Args:
      net: a :class:`gradjax.Net` (anything with ``init_base``, ``scale``, ``cfg``, ``dtype``).
      probe: a :class:`gradjax.measure.probes.Probe`, or a plain function ``(params, key) ->
      pytree``
        (wrapped as ``Probe(per_network=fn)``); pure and jit/vmap-safe. A probe with
        ``lazy_scales=True`` gets the lazy parameters of ``net.scale(..., lazy=True)`` and
        shares each seed's weights across the scale grid; a two-part probe's ``finalize``
        runs as a compiled program of its own over each tile of intermediates.
      seeds: a count (seeds 0..n-1) or explicit seed ids.
      sigma_w: the sigma_w grid; ``None`` keeps the config's value and drops the axis.
      sigma_b: the sigma_b grid; ``None`` keeps the config's value and drops the axis.
      key: root PRNG seed; seed ``i`` uses ``fold_in(key(root), i)``.
      memory_budget_mb: the size of a chunk (the unit of the resumable output and of the
        progress bar), counted as if all of it ran at once: a chunk takes as many seeds as
        fit. Default: half the memory the device reports (GPU, TPU), 1024 MiB on a CPU.
      chunk: explicit ``(seeds_per_chunk, scales_per_chunk)``, overriding the budget; scales
        are rounded up to whole tiles. A resumed ``out_dir`` keeps the chunk layout it was
        started with. The numbers never depend on the chunks: every chunk runs as tiles of
        one seed and a fixed number of grid points (``meta["tile"]``, set by the network,
        the probe, the grid size and the platform), each tile through the same compiled
        programs, on one device or one tile per device.
      progress: ``True`` shows a progress bar over chunks (default: when there are several);
        a callable is called as ``progress(done_chunks, total_chunks)`` after each chunk.
      probe_name: recorded in the result's metadata and in the resume fingerprint (name
        probes that differ only in closed-over settings, so their directories stay apart).
      devices: ``None`` for every device of ``jax.devices()`` (all hosts; but one device for
        a single-process CPU run, whose several CPU devices would share the same cores), an
        int ``n`` for the first ``n`` devices, or an explicit sequence of devices. One device
        runs unsharded. Across hosts keep ``None`` (or a list holding devices of every
        process). On a CPU the sweep runs its programs under
        :func:`gradjax.utils.threads.batched_lapack` (one BLAS thread per LAPACK call).
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
    key = _check_root_key(key)
    n_seed, n_scale = len(grid.seed_ids), len(grid.sigma_w)
    limit = min(cost.memory_limit_bytes(d) for d in device_list)
    _check_network_fits(net, limit)
    dtype = net.dtype
    one = jnp.ones((1, 1), dtype)
    a_key = jax.random.key_data(jax.random.split(jax.random.key(0), 1))
    out_shape = jax.eval_shape(_probe_outputs(net, probe), a_key, one, one)
    names = leaf_names(out_shape)
    leaves_shape = jax.tree.leaves(out_shape)
    point_bytes = sum(leaf.size * leaf.dtype.itemsize for leaf in leaves_shape)
    cost.check_fits(
        f"seeds={n_seed} x {n_scale} grid points: the output",
        n_seed * n_scale * point_bytes,
        cost.host_memory_bytes() // 2,
        unit="the whole sweep (limit: half the host memory)",
    )
    probe_label = probe_name or getattr(probe.per_network, "__qualname__", "probe")
    root = jax.random.key(key)
    seed_keys = jax.vmap(lambda i: jax.random.fold_in(root, i))(jnp.asarray(grid.seed_ids))
    key_data = np.asarray(jax.random.key_data(seed_keys))

    model = _memory_model(net, probe, str(dtype))
    tile = _tile_scales(model, n_scale, _devices.is_cpu(device_list))
    cost.check_fits(
        f"sweep of {_network_text(net)}: one tile of {tile} grid point(s)",
        model.total(1, tile),
        limit,
        unit="one tile",
    )
    budget = _budget_bytes(memory_budget_mb, device_list)

    store = None
    try:
        layout = None
        if out_dir is not None:
            fingerprint = _fingerprint(net, probe_label, key, grid, names, leaves_shape)
            store = store_lib.ChunkStore(
                Path(out_dir), fingerprint, writer=jax.process_index() == 0
            ).open()
            layout = store.layout
        if layout is None:
            layout = _choose_layout(model, tile, n_seed, n_scale, len(device_list), budget, chunk)
        if store is not None:
            store.start(layout)
        seed_chunk, scale_chunk = layout
        runner = _Runner(net, probe, device_list, tile, key_data, dtype)

        buffers = [
            np.empty((n_seed, n_scale, *leaf.shape[2:]), leaf.dtype) for leaf in leaves_shape
        ]
        ranges = [
            (s0, min(s0 + seed_chunk, n_seed), p0, min(p0 + scale_chunk, n_scale))
            for s0 in range(0, n_seed, seed_chunk)
            for p0 in range(0, n_scale, scale_chunk)
        ]
        _run_chunks(runner, store, ranges, names, buffers, grid, tile, progress)

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
            "tile": [1, tile],
            "devices": len(device_list),
            # Names along results' last axes (a probe's labels: block names, ...).
            "labels": {name: list(values) for name, values in probe.labels},
        }
        result = SweepResult(data=data, axes=grid.axes, coords=grid.coords, meta=meta)
        if store is not None:
            store.finish(result)
        return result
    finally:
        if store is not None:
            store.close()  # releases the directory's lock


def _run_chunks(
    runner: Any,
    store: Any,
    ranges: list[tuple[int, int, int, int]],
    names: list[str],
    buffers: list[np.ndarray],
    grid: Any,
    tile: int,
    progress: Any,
) -> None:
    """Fills ``buffers`` chunk by chunk: loaded from ``store`` where finished, else computed
    (and saved). A progress callback hears of chunks; the bar counts tiles, so one long chunk
    shows progress."""
    done = store.finished(ranges, names, buffers) if store is not None else [False] * len(ranges)
    per_chunk = callable(progress) and not isinstance(progress, bool)
    tiles_in = [(s1 - s0) * math.ceil((p1 - p0) / tile) for s0, s1, p0, p1 in ranges]
    total = len(ranges) if per_chunk else sum(tiles_in)
    unit = "chunk" if per_chunk else "tile"
    # gradjax's BLAS thread rule (gradjax.utils.threads) holds until every chunk is on the host.
    with (
        threads.batched_lapack(),
        _devices.Progress(progress, total, desc="sweep", unit=unit) as bar,
    ):
        count = 0
        for index, (bounds, finished) in enumerate(zip(ranges, done, strict=True)):
            interrupts.check()  # a safe point: every finished chunk is saved
            leaves = store.load(bounds, names, buffers) if finished else None
            if leaves is None:
                on_tiles = None if per_chunk else (lambda n, c=count: _tiles_done(bar, c + n))
                leaves = runner(bounds, grid.sigma_w, grid.sigma_b, on_tiles=on_tiles)
                if store is not None:
                    store.save(bounds, names, leaves)
            s0, s1, p0, p1 = bounds
            for buf, leaf in zip(buffers, leaves, strict=True):
                buf[s0:s1, p0:p1] = leaf
            count += tiles_in[index]
            bar.update(index + 1 if per_chunk else count)


def _tiles_done(bar: Any, count: int) -> None:
    """Progress between tiles, which is also a safe point to stop at."""
    bar.update(count)
    interrupts.check()


def _check_root_key(key: Any) -> int:
    if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < 2**63:
        raise invalid("key", key, "an integer seed in [0, 2**63)")
    return int(key)


def _network_text(net: Any) -> str:
    cfg = net.cfg
    return f"width={getattr(cfg, 'width', '?')}, depth={getattr(cfg, 'depth', '?')}"


def _check_network_fits(net: Any, limit: int) -> None:
    """Refuses a network whose parameters alone cannot fit, before anything is compiled."""
    cfg = net.cfg
    if not isinstance(cfg, NetConfig):
        return
    params = cost.network_cost(
        width=cfg.width, depth=cfg.depth, batch=1, dtype=net.dtype, input_dim=cfg.input_dim
    ).param_bytes
    # The base draw and its rescaled copy.
    cost.check_fits(f"sweep of {_network_text(net)}: one network", 2 * params, limit)


# An accelerator's default budget: this fraction of the memory it reports.
_DEVICE_BUDGET_FRACTION = 0.5
_CPU_BUDGET_BYTES = 1024 * 2**20


def _budget_bytes(memory_budget_mb: float | None, devices: Sequence[Any]) -> int:
    """The chunk budget: the user's, else a fraction of the device's reported memory (GPU,
    TPU), else 1 GiB (CPU devices, which report none and share the host's memory)."""
    if memory_budget_mb is not None:
        return int(memory_budget_mb * 2**20)
    if _devices.is_cpu(devices):
        return _CPU_BUDGET_BYTES
    limits = [cost.memory_limit_bytes(d) for d in devices]
    return int(_DEVICE_BUDGET_FRACTION * min(limits)) if min(limits) > 0 else _CPU_BUDGET_BYTES


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
    cfg = getattr(net, "cfg", None)
    # A gradjax Net, or any model in the protocol (e.g. gradjax.boundary.sweepable(...)).
    if not (
        isinstance(cfg, NetConfig)
        or (hasattr(net, "init_base") and hasattr(net, "scale") and hasattr(cfg, "sigma_w"))
    ):
        raise invalid(
            "net",
            type(net).__name__,
            "a gradjax Net (gradjax.build(NetConfig(...))) or gradjax.boundary.sweepable(...)",
        )
    allowed = "a count >= 1 or a non-empty list of integer seed ids >= 0"
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, (bool, np.bool_)):
        check_int("seeds", seeds, minimum=1)
        seed_ids = np.arange(int(seeds))
    else:
        try:
            seed_ids = np.asarray(list(seeds))
        except TypeError:  # a float or another non-iterable
            raise invalid("seeds", seeds, allowed) from None
        if seed_ids.ndim != 1 or seed_ids.size == 0 or seed_ids.dtype.kind not in "iu":
            raise invalid("seeds", seeds, allowed)
        if np.any(seed_ids < 0):
            raise invalid("seeds", seeds, allowed)
    if memory_budget_mb is not None:
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


def _max_points(line: _Linear, limit: int) -> int:
    """The most points ``p`` with ``line(1, p) <= limit`` (a large number when unbounded)."""
    room = limit - line.per_seed
    if room < line.per_point:
        return 0
    return room // line.per_point if line.per_point > 0 else 2**31


def _tile_scales(model: _MemoryModel, n_scale: int, cpu: bool) -> int:
    """Grid points per tile, from the memory model, the grid size and the platform only.

    As many points as keep the memory a tile's points add (beyond its seed's own weights and
    scratch, paid once per tile) under ``_TILE_BYTES`` and, on a CPU, its outputs under
    ``_CPU_REUSED_BUFFER_BYTES``; then evened out over the tiles a seed's grid needs, so the
    last tile carries little padding.
    """
    limits = [(model.total.per_point, _TILE_BYTES)]
    if cpu:
        limits.append((model.largest_output.per_point, _CPU_REUSED_BUFFER_BYTES))
    most = min(
        (limit // per_point for per_point, limit in limits if per_point > 0), default=n_scale
    )
    most = max(1, min(most, n_scale))
    return math.ceil(n_scale / math.ceil(n_scale / most))


def _choose_layout(model, tile, n_seed, n_scale, n_dev, budget_bytes, chunk):
    """``(seeds_per_chunk, scales_per_chunk)`` from an explicit chunk or the memory budget.

    A chunk is the unit of the resumable output and of the progress bar; its scales are whole
    tiles. A seed's whole scale grid goes in one chunk when the budget allows, and as many
    seeds join it as the budget allows (counting a chunk's memory as if it ran at once, which
    is conservative: it runs a tile per device at a time).
    """
    if chunk is not None:
        seeds, scales = chunk
        return min(seeds, n_seed), min(n_scale, math.ceil(scales / tile) * tile)
    total = model.total
    scale_chunk = min(n_scale, max(1, _max_points(total, int(budget_bytes)) // tile) * tile)
    seed_chunk = max(1, min(n_seed, int(budget_bytes // max(total(1, scale_chunk), 1))))
    if n_dev < seed_chunk < n_seed:
        seed_chunk -= seed_chunk % n_dev  # whole tile groups in full chunks
    return seed_chunk, scale_chunk


class _Runner:
    """Computes one chunk, tile by tile (one tile per device at a time), as NumPy leaves."""

    def __init__(self, net, probe, devices, tile, key_data, dtype):
        self.devices = tuple(devices)
        self.tile = tile
        self.key_data = key_data
        self.dtype = dtype
        if len(self.devices) == 1:
            self.fn, self.finalize = _tile_function(net, probe), _finalize_function(probe)
        else:
            self.sharded = _sharded_functions(net, probe, self.devices)

    def _run(self, keys: np.ndarray, sw: np.ndarray, sb: np.ndarray) -> list[np.ndarray]:
        if len(self.devices) == 1:
            keys, sw, sb = jax.device_put((keys, sw, sb), self.devices[0])
            out = self.fn(keys, sw, sb)
            if self.finalize is not None:
                out = self.finalize(out)
            return [np.asarray(x) for x in jax.tree.leaves(out)]
        put = lambda x: _devices.put_global(x, self.sharded.sharding)  # noqa: E731
        out = self.sharded.fn(put(keys), put(sw), put(sb))
        if self.sharded.finalize is not None:
            out = self.sharded.finalize(out)
        return [_devices.to_host(x) for x in jax.tree.leaves(out)]

    def __call__(self, bounds, sigma_w, sigma_b, *, on_tiles=None) -> list[np.ndarray]:
        """The chunk's leaves; ``on_tiles(n)`` is told after each group that ``n`` are done."""
        s0, s1, p0, p1 = bounds
        tiles = [
            (s, q, min(q + self.tile, p1)) for s in range(s0, s1) for q in range(p0, p1, self.tile)
        ]
        n_dev = len(self.devices)
        leaves = None
        for g in range(0, len(tiles), n_dev):
            group = tiles[g : g + n_dev]
            padded = group + [group[-1]] * (n_dev - len(group))  # idle devices redo the last
            keys = np.stack([self.key_data[s] for s, _, _ in padded])
            sw = np.stack(
                [_pad(np.asarray(sigma_w[a:b], self.dtype), self.tile) for _, a, b in padded]
            )
            sb = np.stack(
                [_pad(np.asarray(sigma_b[a:b], self.dtype), self.tile) for _, a, b in padded]
            )
            out = self._run(keys, sw, sb)
            if leaves is None:
                leaves = [np.empty((s1 - s0, p1 - p0, *x.shape[2:]), x.dtype) for x in out]
            for i, (s, a, b) in enumerate(group):
                for leaf, x in zip(leaves, out, strict=True):
                    leaf[s - s0, a - p0 : b - p0] = x[i, : b - a]
            if on_tiles is not None:
                on_tiles(g + len(group))
        return leaves


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    """Pads the leading axis to ``size`` by repeating the last entry (dropped afterwards)."""
    missing = size - x.shape[0]
    if missing == 0:
        return x
    return np.concatenate([x, np.repeat(x[-1:], missing, axis=0)], axis=0)


# ---------------------------------------------------------------------------- resumable output


def _fingerprint(net, probe_label, key, grid: _Grid, names, leaves_shape) -> dict[str, Any]:
    """What makes two sweeps the same sweep: everything that decides the numbers.

    The seeds and grids enter by their count and hash (:func:`gradjax.sweeps.store.array_digest`),
    so the manifest stays small however many seeds and grid points there are.
    """
    return {
        "net": config_to_dict(net.cfg),
        "probe": probe_label,
        "key": int(key),
        "axes": list(grid.axes),
        "seeds": store_lib.array_digest(grid.seed_ids),
        "sigma_w": store_lib.array_digest(grid.sigma_w),
        "sigma_b": store_lib.array_digest(grid.sigma_b),
        "outputs": {
            name: [list(leaf.shape[2:]), str(leaf.dtype)]
            for name, leaf in zip(names, leaves_shape, strict=True)
        },
    }


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
