"""Sharded, multi-chunk and resumable sweeps.

The reference for every sharded number is the same sweep run unsharded on one device (the
independent source: a different program, partitioned by nobody); the reference for a resumed
run is the same sweep run without interruption. conftest.py provides four fake CPU devices.
"""

import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradjax as gj
from gradjax.measure.probes import as_probe

# ``gradjax.sweep`` is the function re-exported by the package; the engine module by its full name.
sweep_module = importlib.import_module("gradjax.sweeps.engine")

SIGMA_W = np.array([0.5, 1.0, 1.5])


@pytest.fixture(scope="module")
def setup():
    net = gj.build(gj.NetConfig(depth=3, width=6, activation="tanh"))
    # One probe object for the module, so compiled chunk functions are reused across tests;
    # a small one (outputs and a weight norm), because compilation dominates these tests.
    return net, _probe_for(net)


def _probe_for(net):
    def probe(params, key):
        x = jax.random.normal(key, (3, 6))
        return {"out": net.apply(params, x)[:, 0], "w2": jnp.sum(params["hidden"]["W"] ** 2)}

    return probe


def _assert_same(a: gj.SweepResult, b: gj.SweepResult, *, exact: bool = True) -> None:
    assert a.names() == b.names()
    assert a.axes == b.axes
    for name in a.names():
        if exact:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-7, err_msg=name)
    for axis in a.axes:
        np.testing.assert_array_equal(a.coords[axis], b.coords[axis])


def test_four_devices_are_visible():
    # Guards the premise of this file: without them the sharded path would not be exercised.
    assert len(jax.devices()) == 4


def test_seed_axis_sharding_is_bitwise_unsharded_with_padding(setup):
    net, probe = setup
    # 5 seeds over 4 devices: the seed axis is padded to 8 and the padding dropped.
    ref = gj.sweep(net, probe, seeds=5, sigma_w=SIGMA_W, chunk=(5, 3), devices=1)
    out = gj.sweep(net, probe, seeds=5, sigma_w=SIGMA_W, chunk=(5, 3), devices=4)
    assert out.meta["devices"] == 4 and ref.meta["devices"] == 1
    assert out["out"].shape == (5, 3, 3)
    _assert_same(ref, out, exact=True)
    # Sanity of the reference itself: the seeds really differ and no value is padding garbage.
    assert np.all(np.isfinite(out["out"]))
    assert not np.allclose(out["out"][0], out["out"][4])


def test_one_seed_over_devices_is_bitwise_its_unsharded_result(setup):
    net, probe = setup
    # 1 seed (< 4 devices): one tile, on one of the devices, the others idle.
    out = gj.sweep(net, probe, seeds=1, sigma_w=SIGMA_W, chunk=(1, 3), devices=4)
    # Seed 0 of the unsharded 5-seed sweep is the same network and inputs.
    ref = gj.sweep(net, probe, seeds=5, sigma_w=SIGMA_W, chunk=(5, 3), devices=1)
    for name in out.names():
        np.testing.assert_array_equal(out[name][0], ref[name][0], err_msg=name)


def test_sharded_repeat_call_does_not_recompile(setup):
    net, probe = setup
    kwargs = dict(seeds=5, sigma_w=SIGMA_W, chunk=(5, 3), devices=4)
    gj.sweep(net, probe, **kwargs)
    fn = sweep_module._sharded_functions(net, as_probe(probe), tuple(jax.devices())).fn
    compiled = fn._cache_size()
    gj.sweep(net, probe, **kwargs)
    assert fn._cache_size() == compiled == 1


class _Interrupt(Exception):
    pass


def _stop_after(n: int):
    def progress(done: int, total: int) -> None:
        if done == n:
            raise _Interrupt(f"stopped after {done} of {total} chunks")

    return progress


# 15 seeds in chunks of 5 (each padded to 8 over the 4 devices: the executable of the first
# test, so no new compilation): 3 chunks.
RESUMABLE = dict(seeds=15, sigma_w=SIGMA_W, chunk=(5, 3), devices=4, progress=False)


def test_interrupted_sweep_resumes_to_the_uninterrupted_result(setup, tmp_path):
    net, probe = setup
    full = gj.sweep(net, probe, out_dir=tmp_path / "full", **RESUMABLE)

    part = tmp_path / "part"
    with pytest.raises(_Interrupt):
        gj.sweep(net, probe, out_dir=part, **{**RESUMABLE, "progress": _stop_after(2)})
    manifest = json.loads((part / "manifest.json").read_text())
    assert not manifest["complete"]
    assert not (part / "arrays.npz").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (part / "chunks").glob("*.npz")}
    assert len(kept) == 2

    seen = []
    # A different chunk request on resume: the directory keeps the layout it started with.
    resumed = gj.sweep(
        net,
        probe,
        out_dir=part,
        **{**RESUMABLE, "chunk": (15, 3), "progress": lambda d, t: seen.append((d, t))},
    )
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert resumed.meta["chunk"] == [5, 3]
    # The finished chunks were loaded, not recomputed and rewritten.
    for name, mtime in kept.items():
        assert (part / "chunks" / name).stat().st_mtime_ns == mtime
    assert len(list((part / "chunks").glob("*.npz"))) == 3
    _assert_same(full, resumed, exact=True)
    _assert_same(full, gj.SweepResult.load(part), exact=True)
    assert json.loads((part / "manifest.json").read_text())["complete"]
    # And the sharded, chunked, resumed sweep is bit-for-bit the unsharded one.
    _assert_same(gj.sweep(net, probe, **{**RESUMABLE, "devices": 1}), resumed, exact=True)


def test_deleted_chunk_is_recomputed(setup, tmp_path):
    net, probe = setup
    full = gj.sweep(net, probe, out_dir=tmp_path, **RESUMABLE)
    chunks = sorted((tmp_path / "chunks").glob("*.npz"))
    chunks[-1].unlink()
    chunks[0].write_bytes(b"not an npz file")  # a damaged file is recomputed, not trusted
    again = gj.sweep(net, probe, out_dir=tmp_path, **RESUMABLE)
    assert chunks[-1].exists()
    with np.load(chunks[0]) as npz:
        assert set(npz.files) == {*full.names(), "__fingerprint__", "__layout__", "__bounds__"}
    _assert_same(full, again, exact=True)


def test_different_sweep_in_same_directory_is_refused(setup, tmp_path):
    net, probe = setup
    kwargs = RESUMABLE
    gj.sweep(net, probe, out_dir=tmp_path, **kwargs)
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(gj.GradjaxInputError, match=r"out_dir=.*differs in sigma_w"):
        gj.sweep(net, probe, out_dir=tmp_path, **{**kwargs, "sigma_w": [0.5, 1.0, 2.0]})
    with pytest.raises(gj.GradjaxInputError, match=r"differs in key \(0 on disk, 1 now\)"):
        gj.sweep(net, probe, out_dir=tmp_path, key=1, **kwargs)
    deeper = gj.build(net.cfg.replace(depth=4))
    with pytest.raises(gj.GradjaxInputError, match=r"net\.depth \(3 on disk, 4 now\)"):
        gj.sweep(deeper, _probe_for(deeper), out_dir=tmp_path, **kwargs)
    with pytest.raises(gj.GradjaxInputError, match=r"differs in probe"):
        gj.sweep(net, probe, out_dir=tmp_path, probe_name="other", **kwargs)
    # Nothing was mixed in: the directory is as the first sweep left it.
    assert (tmp_path / "manifest.json").read_text() == before


def test_default_devices_on_cpu_is_one_device(setup):
    net, probe = setup
    # Several CPU devices of one process share the same cores: the default does not shard.
    res = gj.sweep(net, probe, seeds=5, sigma_w=SIGMA_W, chunk=(5, 3), progress=False)
    assert res.meta["devices"] == 1


def test_bad_devices_and_progress_are_refused(setup):
    net, probe = setup
    for bad in (0, 5, [], ["cpu"], True):
        with pytest.raises(gj.GradjaxInputError, match="devices="):
            gj.sweep(net, probe, seeds=2, devices=bad)
    with pytest.raises(gj.GradjaxInputError, match="progress="):
        gj.sweep(net, probe, seeds=2, progress="yes")


MULTIPROCESS_SCRIPT = """
import sys

import jax
import jax.numpy as jnp
import numpy as np

import gradjax as gj
from gradjax.sweeps import distributed

pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
info = distributed.initialize(
    coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid
)
assert (info.process_count, info.device_count, info.local_device_count) == (2, 4, 2), info
net = gj.build(gj.NetConfig(depth=3, width=6, activation="tanh"))


def probe(params, key):  # the same probe as _probe_for in the test module
    x = jax.random.normal(key, (3, 6))
    return {"out": net.apply(params, x)[:, 0], "w2": jnp.sum(params["hidden"]["W"] ** 2)}


res = gj.sweep(net, probe, seeds=5, sigma_w=[0.5, 1.0, 1.5], chunk=(5, 3), out_dir=out + "/run",
               progress=False)
assert res.meta["devices"] == 4, res.meta
np.save(f"{out}/out{pid}.npy", res["out"])
"""


@pytest.mark.skipif(
    __import__("os").environ.get("GRADJAX_MULTIPROCESS_TESTS") != "1",
    reason="starts two JAX processes (15-80 s on 2 shared cores); "
    "set GRADJAX_MULTIPROCESS_TESTS=1 to run",
)
def test_two_process_sweep_equals_the_single_process_one(setup, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    net, probe = setup
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(pid), port, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    ref = gj.sweep(net, probe, seeds=5, sigma_w=SIGMA_W, chunk=(5, 3), devices=1)
    for pid in (0, 1):
        np.testing.assert_array_equal(np.load(tmp_path / f"out{pid}.npy"), ref["out"])
    # Process 0 alone wrote the resumable directory, and it holds the same numbers.
    _assert_same(ref, gj.SweepResult.load(tmp_path / "run"), exact=True)


def test_device_defaults_and_progress_are_one_home():
    from gradjax.sweeps import devices

    # Four fake CPU devices in one process: LAPACK-bound sweeps take one, training all.
    assert devices.default_devices() == tuple(jax.devices()[:1])
    assert devices.default_devices(cpu_all=True) == tuple(jax.devices())
    assert devices.select_devices(2) == tuple(jax.devices()[:2])
    assert devices.select_devices(np.int64(3)) == tuple(jax.devices()[:3])
    seen = []
    with devices.Progress(
        lambda done, total: seen.append((done, total)), 3, desc="t", unit="u"
    ) as p:
        for done in (1, 2, 3):
            p.update(done)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    with pytest.raises(gj.GradjaxInputError, match="progress"):
        devices.Progress("yes", 3, desc="t", unit="u")
