"""Resumable training: every finished segment on disk, a rerun continues after the last one.

``gj.train(..., out=DIR)`` (and ``gradjax train``) write, as each segment of steps finishes,

* ``segments/records-<s>-<sha256>.npz``: the step records of segment ``s``;
* ``segments/state-<s>-<sha256>.npz``: every run's state after segment ``s`` (parameters,
  optimiser state, BatchNorm statistics, dropout keys), only the latest kept.

Each file is written atomically, is named by the SHA-256 of its bytes, and carries the run's
fingerprint (everything that decides its numbers) and its segment index. A rerun of the same
run loads the longest unbroken prefix of segments whose files check out and continues from
there; a file that does not (damaged, renamed, another run's) is ignored and recomputed. The
segment computation is deterministic, so the histories are bit-identical to an uninterrupted
run's. When the run finishes and its result is saved, the folder is removed.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from gradjax.sweeps.store import fingerprint_digest, sha256_hex
from gradjax.utils import files

__all__ = ["SEGMENTS", "SegmentStore"]

SEGMENTS = "segments"
FORMAT = "gradjax-train-segments/1"


class SegmentStore:
    """The segment files of one training run (see the module docstring).

    Args:
      directory: the run's output directory.
      fingerprint: JSON-ready description of everything that decides the run's numbers.
    """

    def __init__(self, directory: str | Path, fingerprint: dict[str, Any]) -> None:
        self.directory = Path(directory) / SEGMENTS
        self.digest = fingerprint_digest({"format": FORMAT, **fingerprint})
        self._state_file: Path | None = None  # the state file this run wrote or read last

    def resume(self, state: Any, record: Any) -> tuple[Any, list[Any], int]:
        """The saved progress of this run.

        Args:
          state: the run's initial state (its structure, shapes and dtypes are the template).
          record: the records of one segment (arrays or shape structures: the template).

        Returns:
          ``(state, records, done)``: the state after the last checked segment, the records
          of segments ``0 .. done-1``, and ``done``; ``(state, [], 0)`` when nothing checks.
        """
        if not self.directory.is_dir():
            return state, [], 0
        records = []
        while True:
            found = self._read("records", len(records), record)
            if found is None:
                break
            records.append(found[0])
        while records:
            saved = self._read("state", len(records) - 1, state)
            if saved is not None:
                self._state_file = saved[1]
                return saved[0], records, len(records)
            records.pop()  # no state after this segment: recompute it
        return state, [], 0

    def save(self, segment: int, state: Any, record: Any) -> None:
        """Writes segment ``segment``'s records and the state after it; the state after the
        segment before is then removed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write("records", segment, record)
        before, self._state_file = self._state_file, self._write("state", segment, state)
        if before is not None and before != self._state_file:
            before.unlink(missing_ok=True)

    def clear(self) -> None:
        """Removes the segment files (the finished result is saved)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---------------------------------------------------------------- files

    def _write(self, kind: str, segment: int, tree: Any) -> Path:
        arrays = {f"leaf{i:05d}": _host(v) for i, v in enumerate(jax.tree.leaves(tree))}
        arrays["__fingerprint__"] = np.asarray(self.digest)
        arrays["__segment__"] = np.asarray(segment)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        data = buffer.getvalue()
        path = self.directory / f"{kind}-{segment:06d}-{sha256_hex(data)}.npz"
        files.atomic_write(path, lambda f: f.write(data), binary=True)
        return path

    def _read(self, kind: str, segment: int, template: Any) -> tuple[Any, Path] | None:
        """The tree of a checked file of ``kind`` for ``segment`` and its path, or ``None``."""
        leaves, treedef = jax.tree.flatten(template)
        for path in sorted(self.directory.glob(f"{kind}-{segment:06d}-*.npz")):
            try:
                data = path.read_bytes()
                if sha256_hex(data) != path.stem.rsplit("-", 1)[1]:
                    continue
                with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                    if str(npz["__fingerprint__"]) != self.digest:
                        continue
                    if int(npz["__segment__"]) != segment:
                        continue
                    values = [npz[f"leaf{i:05d}"] for i in range(len(leaves))]
            except (OSError, ValueError, KeyError, IndexError):
                continue  # unreadable or another layout: recompute
            restored = [_restore(v, t) for v, t in zip(values, leaves, strict=True)]
            if all(r is not None for r in restored):
                return jax.tree.unflatten(treedef, restored), path
        return None


def _host(value: Any) -> np.ndarray:
    """A host array for the file: a PRNG key as its raw key data."""
    if jax.dtypes.issubdtype(getattr(value, "dtype", np.float32), jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(value))
    return np.asarray(value)


def _restore(value: np.ndarray, template: Any) -> Any | None:
    """``value`` as the template's kind of leaf, or ``None`` when it does not fit it."""
    dtype = getattr(template, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(template)
        key = jax.random.wrap_key_data(value, impl=impl)
        return key if key.shape == template.shape else None
    if tuple(value.shape) != tuple(np.shape(template)) or value.dtype != np.dtype(dtype):
        return None
    return jax.numpy.asarray(value)


def run_fingerprint(meta: dict[str, Any], segments: int, params: Any) -> dict[str, Any]:
    """What decides a run's numbers: its description, its segments and given parameters.

    Args:
      meta: the run's description (:func:`gradjax.training.run_folder.run_description`).
      segments: the number of segments.
      params: the given initial parameters, or ``None``.

    Returns:
      A JSON-ready dict.
    """
    given = None
    if params is not None:
        given = sha256_hex(b"".join(np.asarray(v).tobytes() for v in jax.tree.leaves(params)))
    return {
        "run": json.loads(files.dumps_json(meta, indent=None)),
        "segments": int(segments),
        "params": given,
        "jax": jax.__version__,
    }
