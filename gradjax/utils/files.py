"""Files gradjax writes: JSON that is always valid, and atomic writes with unique temp names.

Every file gradjax writes goes through :func:`atomic_write`: the bytes go to a uniquely named
temporary file in the target's directory, are flushed to disk, and then renamed over the
target. Readers never see a half-written file, an interrupted run leaves the old file intact,
and two processes writing the same target never share a temporary name.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

# Temporary files are ``.<target name>.<random>.tmp``; ones older than this are left-overs of
# a killed writer (a live write takes far less) and :func:`remove_stale_temps` deletes them.
STALE_TEMP_SECONDS = 3600.0


def json_safe(value: Any) -> Any:
    """Converts a result to JSON-ready Python values.

    Mappings become dicts with string keys; NumPy/JAX arrays and tuples become lists; NumPy
    scalars become Python numbers; non-finite floats become the strings ``"nan"``, ``"inf"``
    and ``"-inf"`` (the JSON standard has no NaN); anything else becomes its ``str``.

    Args:
      value: any nesting of mappings, sequences, arrays and scalars.

    Returns:
      A value that ``json.dumps(..., allow_nan=False)`` accepts.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        arr = np.asarray(value)
        return json_safe(arr.tolist()) if arr.ndim else json_safe(arr.item())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def dumps_json(value: Any, *, indent: int | None = 2) -> str:
    """``json.dumps`` of :func:`json_safe` ``(value)``: always standard JSON (no bare NaN)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def atomic_write(path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = False):
    """Writes a file atomically: ``write(f)`` into a unique temp file, then a rename.

    Args:
      path: the target file (its directory must exist).
      write: called with the open temporary file.
      binary: open the temporary file in binary mode.

    Returns:
      The target path.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        # mkstemp makes the file 0600; a file gradjax writes gets the mode the user's umask
        # gives any new file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    """The process's umask (read and restored: ``os.umask`` has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, value: Any) -> Path:
    """Writes ``value`` as standard JSON (see :func:`dumps_json`) to ``path`` atomically."""
    return atomic_write_text(path, dumps_json(value) + "\n")


def atomic_savez(path: str | Path, arrays: Mapping[str, Any]) -> Path:
    """Writes NumPy arrays as an uncompressed ``.npz`` (no pickle) to ``path`` atomically."""
    host = {k: np.asarray(v) for k, v in arrays.items()}
    return atomic_write(path, lambda f: np.savez(f, **host), binary=True)


def remove_stale_temps(directory: str | Path, *, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Deletes temporary files left by killed writers in ``directory``.

    Args:
      directory: a directory gradjax writes into (missing: nothing to do).
      older_than: only temp files whose last change is at least this many seconds old.

    Returns:
      How many files were removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    now, removed = time.time(), 0
    for tmp in directory.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime >= older_than:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:  # another process removed or renamed it first
            continue
    return removed


# The file that marks a directory as written by one gradjax verb.
OWNER_MARK = ".gradjax-owner"


# What each verb's directory holds from its first moments, marked or not: a directory with
# another verb's signs is that verb's (a sweep still being written has no mark and no result
# yet, only its manifest and chunk folder).
VERB_SIGNS = {
    "sweep": ("manifest.json", "chunks"),
    "train": ("segments", "history.npz"),
    "figures": (".cache",),
}


def claim_output_dir(
    directory: str | Path,
    verb: str,
    outputs: list[str],
    *,
    overwrite: bool = False,
    legacy: Callable[[Path], bool] | None = None,
) -> Path:
    """Marks ``directory`` as ``verb``'s, refusing one that holds files someone else wrote.

    The one output-folder rule of every verb: a directory marked by this verb (a rerun, a
    resume) is reused; a directory marked by another verb is refused; an unmarked one that
    already holds a file ``verb`` would write (a user's ``REPORT.md``) is refused, naming the
    files, unless ``overwrite``. Call it after the directory exists and before anything is
    written.

    Args:
      directory: the output directory (existing).
      verb: the command, e.g. ``"figures"``.
      outputs: the file names the verb writes there.
      overwrite: replace such files anyway.
      legacy: recognises a directory this verb wrote before directories were marked.

    Returns:
      The directory.

    Raises:
      GradjaxInputError: naming the directory, the files and what is allowed.
    """
    from gradjax.utils.errors import invalid

    out = Path(directory)
    mark = out / OWNER_MARK
    owner = None
    if mark.is_file():
        try:
            owner = json.loads(mark.read_text()).get("verb")
        except (OSError, ValueError, AttributeError):
            owner = None
    if owner is None:
        signs = [v for v, names in VERB_SIGNS.items() if any((out / n).exists() for n in names)]
        owner = next((v for v in signs if v != verb), None)
    if owner is not None and owner != verb and not overwrite:
        raise invalid(
            "--out",
            str(out),
            f"a directory of `gradjax {verb}` (it holds `gradjax {owner}` "
            "results; use another directory)",
        )
    folders = sorted(name for name in outputs if (out / name).is_dir())
    if folders:  # refused before any work: the run would fail when it writes its result
        raise invalid(
            "--out",
            str(out),
            f"a directory where `gradjax {verb}` can write its files ({', '.join(folders)} "
            "is a folder; move it away or use another directory)",
        )
    if owner is None and not overwrite and not (legacy is not None and legacy(out)):
        clash = sorted(name for name in outputs if (out / name).exists())
        if clash:
            raise invalid(
                "--out",
                str(out),
                f"a new directory or one `gradjax {verb}` wrote (it holds {', '.join(clash)} "
                "that gradjax did not write; use another directory or --overwrite)",
            )
    if owner != verb:
        atomic_write_json(mark, {"verb": verb})
    return out
