"""The sweep's resumable output directory: checked chunks, a small manifest and a lock.

Layout of a directory written by :func:`gradjax.sweep` with ``out_dir``::

    manifest.json        what sweep this is (its fingerprint), the chunk layout, complete or not
    chunks/<bounds>-<sha256>.npz   one file per finished chunk, named by its content hash
    .lock                held by the run writing the directory
    arrays.npz, meta.json          the whole result, once complete (SweepResult.save)

The manifest does not grow with the sweep: the seeds and grids are recorded by their count and
a SHA-256 hash, and each chunk's hash is carried in its own file name, so finishing a chunk
writes one file and rewrites nothing. A chunk is trusted only if its bytes hash to its name
and it holds this sweep's fingerprint and the expected arrays; anything else (truncated,
empty, garbled, zero-filled, from another sweep) is deleted and recomputed. A manifest that
cannot be read is rebuilt from the chunks that pass those checks (or the directory started
afresh when none does), rather than blocking the directory. Every file is written
atomically (:mod:`gradjax.utils.files`), temporary files left by a killed run are removed on open,
and
one run at a time writes a directory: a second waits for the lock, then gives up with one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io as _bytes_io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gradjax.utils import files as io
from gradjax.utils.errors import invalid

FORMAT = "gradjax-sweep/2"
MANIFEST = "manifest.json"
CHUNKS = "chunks"
LOCK = ".lock"
# The files a finished sweep leaves beside its manifest and chunks.
RESULT_FILES = ("arrays.npz", "meta.json", "sweep.png", "sweep.pdf")
# How long a second writer waits for the lock before giving up.
LOCK_TIMEOUT_S = 60.0
_FINGERPRINT_KEY = "__fingerprint__"
_BOUNDS_KEY = "__bounds__"

_log = logging.getLogger("gradjax")


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def array_digest(values: Any) -> dict[str, Any]:
    """A fixed-size description of a 1-D array: its count and the SHA-256 of its bytes.

    Integers are hashed as int64 and reals as float64, so equal values give equal digests.
    """
    arr = np.asarray(values)
    arr = arr.astype(np.int64 if arr.dtype.kind in "iub" else np.float64)
    return {"count": int(arr.size), "sha256": sha256_hex(np.ascontiguousarray(arr).tobytes())}


def fingerprint_digest(fingerprint: dict[str, Any]) -> str:
    """The SHA-256 of a fingerprint's canonical JSON."""
    return sha256_hex(json.dumps(fingerprint, sort_keys=True).encode())


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names where two fingerprints differ, with both values where they are short."""
    if isinstance(old, dict) and isinstance(new, dict):
        if "sha256" in old or "sha256" in new:  # an array digest: one name for the array
            return [] if old == new else [prefix[:-1]]
        out = []
        for k in sorted(set(old) | set(new)):
            out += differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old == new:
        return []
    name = prefix[:-1]
    if isinstance(old, (list, dict)) or isinstance(new, (list, dict)):
        return [name]
    return [f"{name} ({old!r} on disk, {new!r} now)"]


def chunk_stem(bounds: tuple[int, int, int, int]) -> str:
    """The file name of a chunk without its hash: its seed and grid-point ranges."""
    s0, s1, p0, p1 = bounds
    return f"seed{s0:06d}-{s1:06d}_scale{p0:07d}-{p1:07d}"


def _parse_name(name: str) -> tuple[tuple[int, int, int, int], str] | None:
    """``(bounds, sha256)`` from a chunk file name, or ``None`` if it is not one."""
    if not name.endswith(".npz"):
        return None
    try:
        stem, digest = name[: -len(".npz")].rsplit("-", 1)
        seeds, scales = stem.split("_scale")
        s0, s1 = (int(v) for v in seeds[len("seed") :].split("-"))
        p0, p1 = (int(v) for v in scales.split("-"))
    except ValueError:
        return None
    if len(digest) != 64 or not seeds.startswith("seed"):
        return None
    return (s0, s1, p0, p1), digest


class DirectoryLock:
    """An exclusive ``fcntl.flock`` on ``directory/.lock``, held while a run writes there."""

    def __init__(self, directory: Path, *, timeout_s: float | None = None) -> None:
        self.path = directory / LOCK
        self.timeout_s = LOCK_TIMEOUT_S if timeout_s is None else timeout_s
        self.fd: int | None = None

    def acquire(self, field: str = "out_dir") -> None:
        """Takes the lock, waiting up to ``timeout_s`` (with one message while waiting).

        Raises:
          GradjaxInputError: when another process still holds it after ``timeout_s``.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    os.close(fd)
                    raise
            waited = time.monotonic() - start
            if waited >= self.timeout_s:
                os.close(fd)
                raise invalid(
                    field,
                    str(self.path.parent),
                    f"a directory no other run is writing (another process held its lock for "
                    f"{waited:.0f} s; wait for it to finish or use another directory)",
                )
            if not told:
                print(
                    f"gradjax: {self.path.parent} is being written by another run; waiting up "
                    f"to {self.timeout_s:.0f} s for it",
                    file=sys.stderr,
                )
                told = True
            time.sleep(min(0.2, max(self.timeout_s - waited, 0.01)))
        self.fd = fd

    def release(self) -> None:
        """Releases the lock (closing the file releases the ``flock``)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ChunkStore:
    """The resumable directory of one sweep (see the module docstring).

    Only the writer (process 0 of a multi-host run) creates, locks and writes the directory;
    which chunks are finished is decided on process 0 and broadcast, so every process computes
    the same chunks in the same order.

    Args:
      directory: the output directory.
      fingerprint: JSON-ready description of everything that decides the sweep's numbers.
      writer: whether this process writes.
      lock_timeout_s: how long to wait for another writer's lock (default
        ``LOCK_TIMEOUT_S``).
    """

    def __init__(
        self,
        directory: Path,
        fingerprint: dict[str, Any],
        *,
        writer: bool = True,
        lock_timeout_s: float | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fingerprint = json.loads(io.dumps_json(fingerprint))
        self.digest = fingerprint_digest(self.fingerprint)
        self.writer = writer
        self.manifest: dict[str, Any] | None = None
        self.lock = DirectoryLock(self.directory, timeout_s=lock_timeout_s)
        self._files: dict[tuple[int, int, int, int], Path] = {}
        self._loaded: dict[tuple[int, int, int, int], list[np.ndarray]] = {}

    # ------------------------------------------------------------------ opening

    def open(self) -> ChunkStore:
        """Creates or checks the directory, takes its lock and reads (or rebuilds) the manifest.

        Raises:
          GradjaxInputError: if the directory holds a different sweep or something else, is
            not writable, or another run keeps it locked.
        """
        if not self.writer:
            self.manifest = self._read_manifest()
            return self
        self._refuse_foreign()  # before anything is created in someone else's directory
        self._refuse_wrong_kinds()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise invalid("out_dir", str(self.directory), "a writable directory") from err
        self.lock.acquire()
        try:
            (self.directory / CHUNKS).mkdir(exist_ok=True)
            # With the lock held no other writer is at work here: every temp file is a
            # killed writer's left-over, whatever its age.
            io.remove_stale_temps(self.directory, older_than=0.0)
            io.remove_stale_temps(self.directory / CHUNKS, older_than=0.0)
            self._open_locked()
        except BaseException:
            self.lock.release()
            raise
        return self

    def _open_locked(self) -> None:
        path = self.directory / MANIFEST
        manifest = self._read_manifest()
        if manifest is not None:
            diff = differences(manifest["fingerprint"], self.fingerprint)
            if diff:
                raise invalid(
                    "out_dir",
                    str(self.directory),
                    "a new directory or one holding this same sweep; it holds a different "
                    f"sweep (differs in {'; '.join(diff[:6])}{'; ...' if len(diff) > 6 else ''})"
                    " - use another directory or delete it",
                )
            self.manifest = manifest
            return
        # Missing, unreadable or ill-typed: rebuilt from the chunks that prove they are this
        # sweep's (they carry its fingerprint and layout), or started afresh.
        layout = self._layout_from_chunks()
        if path.exists():
            _log.warning(
                "gradjax: %s is unreadable; rebuilt from %s",
                path,
                "its valid chunks" if layout else "scratch (no valid chunk)",
            )
            _remove(path)
        if layout is not None:
            self.manifest = self._new_manifest(layout)
            self._write_manifest()

    def _refuse_foreign(self) -> None:
        """Refuses a directory that is not a sweep's (no chunk folder, no readable manifest)
        and holds anything but a lock: a user's ``arrays.npz`` or ``sweep.png`` there would
        be overwritten, their ``manifest.json`` replaced."""
        if not self.directory.is_dir():
            return
        if (self.directory / CHUNKS).is_dir() or self._read_manifest() is not None:
            return  # a sweep's directory: resumed, its damage repaired
        foreign = sorted(
            p.name
            for p in self.directory.iterdir()
            if p.name != LOCK and not p.name.endswith(".tmp")
        )
        if foreign:
            raise invalid(
                "out_dir",
                str(self.directory),
                "a new or empty directory, or one holding this same sweep; it holds other "
                f"files ({', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''})",
            )

    def _refuse_wrong_kinds(self) -> None:
        """Refuses, before any work, a folder where the sweep writes a file (its manifest,
        lock, result or a chunk) or a file where it keeps its chunk folder: nothing of the
        user's is deleted to make room, and no run fails after its compute."""
        d = self.directory
        files = [d / n for n in (MANIFEST, LOCK, *RESULT_FILES)]
        if (d / CHUNKS).is_dir():
            files += list((d / CHUNKS).iterdir())
        wrong = [p for p in files if p.is_dir()]
        wrong += [d / CHUNKS] if (d / CHUNKS).exists() and not (d / CHUNKS).is_dir() else []
        if wrong:
            name = str(wrong[0].relative_to(d))
            kind = "folder" if wrong[0].is_dir() else "file"
            raise invalid(
                "out_dir",
                str(d),
                f"a sweep directory whose entries are what the sweep writes ({name} is a "
                f"{kind}; move it away or use another directory)",
            )

    def _read_manifest(self) -> dict[str, Any] | None:
        """The manifest if it is readable and well-typed, else ``None``."""
        try:
            manifest = json.loads((self.directory / MANIFEST).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        ok = (
            isinstance(manifest, dict)
            and manifest.get("format") == FORMAT
            and isinstance(manifest.get("fingerprint"), dict)
            and isinstance(manifest.get("chunk"), list)
            and len(manifest["chunk"]) == 2
            and all(isinstance(v, int) and v >= 1 for v in manifest["chunk"])
            and isinstance(manifest.get("complete"), bool)
        )
        return manifest if ok else None

    def _layout_from_chunks(self) -> tuple[int, int] | None:
        """The chunk layout of the valid chunks on disk (deleting the rest), or ``None``."""
        layouts = set()
        for path in sorted((self.directory / CHUNKS).glob("*.npz")):
            parsed = _parse_name(path.name)
            arrays = self._read_checked(path, parsed[1]) if parsed else None
            if arrays is None or "__layout__" not in arrays:
                _remove(path)
                continue
            layouts.add(tuple(int(v) for v in arrays["__layout__"]))
        return layouts.pop() if len(layouts) == 1 else None

    # ------------------------------------------------------------------ chunks

    @property
    def layout(self) -> tuple[int, int] | None:
        """The chunk layout the directory was started with, if any."""
        if self.manifest is None:
            return None
        seeds, scales = self.manifest["chunk"]
        return int(seeds), int(scales)

    def _new_manifest(self, layout: tuple[int, int]) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "fingerprint_sha256": self.digest,
            "chunk": [int(layout[0]), int(layout[1])],
            "complete": False,
        }

    def start(self, layout: tuple[int, int]) -> None:
        """Records the chunk layout of a new directory."""
        if self.manifest is None:
            self.manifest = self._new_manifest(layout)
            self._write_manifest()

    def finished(self, ranges, names, buffers) -> list[bool]:
        """Which of ``ranges`` have a chunk that passes every check; failing files are deleted.

        The writer decides (reading and checking every chunk once) and every process follows
        its verdict, so all processes compute the same chunks.

        Args:
          ranges: the chunks' ``(s0, s1, p0, p1)`` bounds.
          names: the result's leaf names.
          buffers: arrays shaped ``(seeds, points, ...)`` with each leaf's trailing shape and
            dtype.
        """
        files = {}
        for path in (self.directory / CHUNKS).glob("*.npz"):
            parsed = _parse_name(path.name)
            if parsed is not None:
                files[parsed[0]] = path
        self._files, self._loaded = files, {}
        if self.writer:
            for bounds in ranges:
                if tuple(bounds) in files:
                    leaves = self._load_checked(tuple(bounds), names, buffers)
                    if leaves is None:
                        _remove(files[tuple(bounds)])
                    else:
                        self._loaded[tuple(bounds)] = leaves
        mask = np.array([tuple(b) in self._loaded for b in ranges], dtype=bool)
        import jax

        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
        return [bool(m) for m in mask]

    def _read_checked(self, path: Path, digest: str) -> dict[str, np.ndarray] | None:
        """A chunk file's arrays if its bytes hash to ``digest`` and it is this sweep's."""
        try:
            data = path.read_bytes()
            if sha256_hex(data) != digest:
                return None
            with np.load(_bytes_io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except Exception:  # any damage (zip, zlib, header, EOF): the chunk is recomputed
            return None
        mark = arrays.get(_FINGERPRINT_KEY)
        if (
            mark is None
            or bytes(np.asarray(mark, np.uint8)).decode(errors="replace") != self.digest
        ):
            return None
        return arrays

    def _load_checked(self, bounds, names, buffers) -> list[np.ndarray] | None:
        """A chunk file's leaves if it passes every check (hash, fingerprint, the seeds and
        grid points it holds, shapes), or None."""
        s0, s1, p0, p1 = bounds
        path = self._files.get(bounds)
        parsed = _parse_name(path.name) if path is not None else None
        arrays = self._read_checked(path, parsed[1]) if parsed else None
        if arrays is None:
            return None
        held = arrays.get(_BOUNDS_KEY)
        if held is None or tuple(int(v) for v in np.ravel(held)) != tuple(bounds):
            return None
        leaves = [arrays.get(name) for name in names]
        if all(
            leaf is not None
            and leaf.shape == (s1 - s0, p1 - p0, *buf.shape[2:])
            and leaf.dtype == buf.dtype
            for leaf, buf in zip(leaves, buffers, strict=True)
        ):
            return leaves
        return None

    def load(self, bounds, names, buffers) -> list[np.ndarray]:
        """The leaves of a chunk that :meth:`finished` reported finished.

        Raises:
          GradjaxInputError: on a process other than the writer, when it cannot read a chunk
            the writer could (``out_dir`` must be on a filesystem every host shares).
        """
        bounds = tuple(bounds)
        leaves = self._loaded.pop(bounds, None)
        if leaves is None:
            leaves = self._load_checked(bounds, names, buffers)
        if leaves is None:
            raise invalid(
                "out_dir",
                str(self.directory),
                f"a directory every process reads alike (chunk {chunk_stem(bounds)} is "
                "readable on process 0 only; use a filesystem all hosts share)",
            )
        return leaves

    def save(self, bounds, names, leaves) -> None:
        """Writes a finished chunk atomically, named by the SHA-256 of its bytes."""
        if not self.writer:
            return
        arrays = dict(zip(names, leaves, strict=True))
        arrays[_FINGERPRINT_KEY] = np.frombuffer(self.digest.encode(), np.uint8)
        arrays["__layout__"] = np.asarray(self.layout, np.int64)
        # The seeds and grid points it holds: a chunk renamed or copied onto another's name
        # does not say what its name says, and is recomputed.
        arrays[_BOUNDS_KEY] = np.asarray(bounds, np.int64)
        buf = _bytes_io.BytesIO()
        np.savez(buf, **arrays)
        data = buf.getvalue()
        name = f"{chunk_stem(bounds)}-{sha256_hex(data)}.npz"
        io.atomic_write(self.directory / CHUNKS / name, lambda f: f.write(data), binary=True)

    def finish(self, result: Any) -> None:
        """Writes the whole result and marks the directory complete."""
        if not self.writer:
            return
        result.save(self.directory)
        self.manifest["complete"] = True
        self._write_manifest()

    def close(self) -> None:
        """Releases the directory's lock."""
        self.lock.release()

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _write_manifest(self) -> None:
        if self.writer:
            io.atomic_write_json(self.directory / MANIFEST, self.manifest)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def check_result_dir(directory: Path) -> None:
    """Raises a one-line error unless ``directory`` holds a saved sweep result.

    Raises:
      GradjaxInputError: naming the directory and what it lacks.
    """
    missing = [n for n in ("meta.json", "arrays.npz") if not (directory / n).is_file()]
    if missing:
        raise invalid(
            "directory",
            str(directory),
            f"a saved sweep result (meta.json and arrays.npz); it lacks {', '.join(missing)}",
        )
