"""The resumable sweep directory heals: damaged chunks and manifests, locks, stale temps."""

import json
import os
import time

import jax
import numpy as np
import pytest

import gradjax as gj
from gradjax.sweeps import store

NET = gj.build(gj.NetConfig(depth=3, width=6, activation="tanh"))
KW = dict(seeds=4, sigma_w=[0.5, 1.5], chunk=(1, 2), progress=False)


def _probe(params, key):
    x = jax.random.normal(key, (3, 6))
    return {"out": NET.apply(params, x)[:, 0], "w2": jax.numpy.sum(params["hidden"]["W"] ** 2)}


@pytest.fixture(scope="module")
def reference():
    """The same sweep without a directory: what every healed run must reproduce bit for bit."""
    return gj.sweep(NET, _probe, **KW)


def _same(a, b):
    for name in a.names():
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def _chunks(directory):
    return sorted((directory / "chunks").glob("*.npz"))


def _finished(tmp_path):
    out = tmp_path / "run"
    gj.sweep(NET, _probe, out_dir=out, **KW)
    assert len(_chunks(out)) == 4
    return out


def test_truncated_and_empty_chunks_are_recomputed(tmp_path, reference):
    out = _finished(tmp_path)
    first, second = _chunks(out)[:2]
    first.write_bytes(first.read_bytes()[:100])
    second.write_bytes(b"")
    kept = {p.name: p.stat().st_mtime_ns for p in _chunks(out)[2:]}
    _same(gj.sweep(NET, _probe, out_dir=out, **KW), reference)
    assert len(_chunks(out)) == 4  # the damaged files were replaced, not left beside
    for name, mtime in kept.items():  # the sound ones were loaded, not rewritten
        assert (out / "chunks" / name).stat().st_mtime_ns == mtime


def test_zero_filled_chunk_fails_its_hash_and_is_recomputed(tmp_path, reference):
    out = _finished(tmp_path)
    path = _chunks(out)[0]
    with np.load(path) as npz:
        arrays = {k: np.zeros_like(npz[k]) if not k.startswith("__") else npz[k] for k in npz}
    with open(path, "wb") as f:  # a valid .npz of the right shapes, under the old name
        np.savez(f, **arrays)
    res = gj.sweep(NET, _probe, out_dir=out, **KW)
    assert np.all(res["w2"] > 0)
    _same(res, reference)


def _rename_keeping_hash(path, stem):
    """The chunk file under another chunk's seed/grid name, its own (valid) hash kept."""
    return path.with_name(f"{stem}-{path.name.rsplit('-', 1)[1]}")


def test_swapped_or_copied_chunks_are_recomputed(tmp_path, reference):
    # Each file keeps its own hash (so its bytes are intact), but holds other seeds than its
    # name says: swapped seeds 0 and 1, and seed 0's chunk copied onto seed 3's name.
    out = _finished(tmp_path)
    (out / "arrays.npz").unlink()
    chunks = _chunks(out)
    stems = [p.name.rsplit("-", 1)[0] for p in chunks]
    a, b, c = chunks[0], chunks[1], chunks[3]
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    for p in (a, b, c):
        p.unlink()
    _rename_keeping_hash(a, stems[1]).write_bytes(a_bytes)
    _rename_keeping_hash(b, stems[0]).write_bytes(b_bytes)
    _rename_keeping_hash(a, stems[3]).write_bytes(a_bytes)
    _same(gj.sweep(NET, _probe, out_dir=out, **KW), reference)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "",  # empty
        lambda text: json.dumps({**json.loads(text), "chunk": "five"}),  # ill-typed
        lambda text: "[1, 2]",  # not an object
    ],
)
def test_bad_manifest_is_rebuilt_from_valid_chunks(tmp_path, reference, damage):
    out = _finished(tmp_path)
    manifest = out / "manifest.json"
    manifest.write_text(damage(manifest.read_text()))
    kept = {p.name: p.stat().st_mtime_ns for p in _chunks(out)}
    _same(gj.sweep(NET, _probe, out_dir=out, **KW), reference)
    assert json.loads(manifest.read_text())["complete"] is True
    for name, mtime in kept.items():  # rebuilt around the chunks: nothing recomputed
        assert (out / "chunks" / name).stat().st_mtime_ns == mtime


def test_a_second_writer_waits_then_is_refused_with_one_line(tmp_path, reference, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    holder = store.DirectoryLock(out)  # another run writing the directory
    holder.acquire()
    monkeypatch.setattr(store, "LOCK_TIMEOUT_S", 0.5)
    try:
        start = time.monotonic()
        with pytest.raises(gj.GradjaxInputError, match="another process held its lock") as err:
            gj.sweep(NET, _probe, out_dir=out, **KW)
        assert time.monotonic() - start >= 0.5
        assert "\n" not in str(err.value)
        assert not (out / "manifest.json").exists()
    finally:
        holder.release()
    _same(gj.sweep(NET, _probe, out_dir=out, **KW), reference)  # free again: it runs


def test_left_over_temporary_files_are_removed_on_open(tmp_path, reference):
    # The directory's lock is held while they are removed, so no live writer owns any of
    # them: a temp left by a writer killed a second ago goes as well as an old one.
    out = _finished(tmp_path)
    old, fresh = out / ".manifest.json.x1.tmp", out / "chunks" / ".a.npz.x2.tmp"
    young = out / ".meta.json.x3.tmp"
    for path in (old, fresh, young):
        path.write_text("left by a killed writer")
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    _same(gj.sweep(NET, _probe, out_dir=out, **KW), reference)
    assert not old.exists() and not fresh.exists() and not young.exists()


def test_files_get_the_mode_the_umask_gives(tmp_path):
    from gradjax.utils.files import atomic_write_text

    previous = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_manifest_size_does_not_grow_with_seeds_or_grid(tmp_path):
    sizes = []
    for seeds, grid in ((2, [1.0]), (300, list(np.linspace(0.5, 2.0, 40)))):
        out = tmp_path / f"s{seeds}"
        gj.sweep(NET, _probe, seeds=seeds, sigma_w=grid, out_dir=out, progress=False)
        sizes.append((out / "manifest.json").stat().st_size)
    assert abs(sizes[1] - sizes[0]) <= 8  # a few more digits in the counts


def test_directories_holding_something_else_are_refused(tmp_path):
    other = tmp_path / "train_run"
    other.mkdir()
    (other / "history.npz").write_bytes(b"")
    with pytest.raises(gj.GradjaxInputError, match="out_dir=.*holds other files"):
        gj.sweep(NET, _probe, out_dir=other, **KW)
    assert sorted(p.name for p in other.iterdir()) == ["history.npz"]
    # A user's file with a name a sweep writes, in a directory that is not a sweep's.
    for name in ("arrays.npz", "sweep.png", "manifest.json"):
        users = tmp_path / f"users-{name}"
        users.mkdir()
        (users / name).write_bytes(b"a user's own file")
        with pytest.raises(gj.GradjaxInputError, match=f"holds other files \\({name}"):
            gj.sweep(NET, _probe, out_dir=users, **KW)
        assert (users / name).read_bytes() == b"a user's own file"
    for bad in (other, tmp_path / "missing"):
        with pytest.raises(gj.GradjaxInputError, match="directory=.*saved sweep result") as err:
            gj.SweepResult.load(bad)
        assert str(bad) in str(err.value)
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "meta.json").write_text("{")
    (garbled / "arrays.npz").write_bytes(b"PK")
    with pytest.raises(gj.GradjaxInputError, match="do not read as one"):
        gj.SweepResult.load(garbled)


def test_a_folder_where_a_sweep_writes_a_file_is_refused_before_any_work(tmp_path):
    out = tmp_path / "sweep"
    gj.sweep(NET, _probe, out_dir=out, **KW)
    before = sorted(p.name for p in (out / "chunks").iterdir())
    (out / "arrays.npz").unlink()
    (out / "arrays.npz").mkdir()  # a folder where the result goes
    with pytest.raises(gj.GradjaxInputError, match="arrays.npz is a folder"):
        gj.sweep(NET, _probe, out_dir=out, **KW)
    assert sorted(p.name for p in (out / "chunks").iterdir()) == before  # nothing lost
