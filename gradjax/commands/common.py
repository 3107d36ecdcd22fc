"""Helpers shared by the subcommands: the parser, output directories, argument types, flag names.

Every verb parses its flags with the types below, so one flag means one thing everywhere
(``--seed`` is a non-negative integer below 2**63 in every command, ``--out`` is never
empty), and a refused value is reported as one line naming the flag, with exit status 2,
before anything is written. A library error raised for a command names the flag, not the
library's field (:func:`flags`, :func:`renamed_field`).
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gradjax.utils.errors import GradjaxInputError

if TYPE_CHECKING:
    import numpy as np

# Seeds become unsigned 64-bit PRNG seeds; below 2**63 they are also valid signed integers.
MAX_SEED = 2**63 - 1
# Sizes (depth, width, seeds, steps, ...) above this overflow int32 shapes and indices.
MAX_SIZE = 2**31 - 1


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2.

    Argparse prints the whole usage block above a usage error; a one-line error is what
    the rest of gradjax prints for bad input, and scripts can read it.
    """

    def error(self, message: str) -> NoReturn:
        """Prints ``prog: error: message`` on one line and exits with status 2."""
        text = " ".join(str(message).split())
        # "argument --seed: '-1' is invalid: ..." -> "--seed='-1' is invalid: ...", the form
        # every other gradjax input error has.
        match = re.match(r"argument (\S+?): ('.*' is invalid: .*)$", text)
        if match:
            text = match.group(1).split("/")[-1] + "=" + match.group(2)
        print(f"{self.prog}: error: {text} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _refuse(text: str, allowed: str) -> NoReturn:
    raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected {allowed}")


def out_dir(text: str) -> str:
    """argparse type of ``--out``: a non-empty directory path (nothing is created here).

    An empty path would write into the current directory; it is refused.
    """
    if not text.strip():
        _refuse(text, "a non-empty directory path")
    if "\x00" in text:
        _refuse(text, "a directory path without NUL characters")
    return text


def seed(text: str) -> int:
    """argparse type of ``--seed``: an integer in ``[0, 2**63 - 1]``."""
    return _int_in(text, 0, MAX_SEED)


def positive_int(text: str) -> int:
    """argparse type: an integer in ``[1, 2**31 - 1]``."""
    return _int_in(text, 1, MAX_SIZE)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer in ``[0, 2**31 - 1]``."""
    return _int_in(text, 0, MAX_SIZE)


def _int_in(text: str, minimum: int, maximum: int) -> int:
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        _refuse(text, f"an integer in [{minimum}, {maximum}]")
    if not minimum <= value <= maximum:
        _refuse(text, f"an integer in [{minimum}, {maximum}]")
    return value


def real(text: str) -> float:
    """argparse type: a finite number."""
    return _real(text, None, strictly_positive=False)


def positive_real(text: str) -> float:
    """argparse type: a finite number > 0."""
    return _real(text, None, strictly_positive=True)


def nonnegative_real(text: str) -> float:
    """argparse type: a finite number >= 0."""
    return _real(text, 0.0, strictly_positive=False)


def _real(text: str, minimum: float | None, *, strictly_positive: bool) -> float:
    what = "a finite number" + (
        " > 0" if strictly_positive else (f" >= {minimum:g}" if minimum is not None else "")
    )
    try:
        value = float(text)
    except ValueError:
        _refuse(text, what)
    if not math.isfinite(value):
        _refuse(text, what)
    if (strictly_positive and value <= 0) or (minimum is not None and value < minimum):
        _refuse(text, what)
    return value


def grid(
    *, minimum: float | None = 0.0, strictly_positive: bool = False, max_points: int = 100_000
) -> Callable[[str], np.ndarray]:
    """argparse type factory: ``start:stop:count`` (inclusive) or ``a,b,c`` as a float64 array.

    Args:
      minimum: smallest allowed value (None: any finite value).
      strictly_positive: every value must be > 0.
      max_points: the most points a grid may have (a huge count is refused before
        ``numpy.linspace`` allocates it).

    Returns:
      The argparse type.
    """
    import numpy as np

    from gradjax.nets.config import parse_range

    bound = " > 0" if strictly_positive else (f" >= {minimum:g}" if minimum is not None else "")
    allowed = (
        f"'start:stop:count' (1 <= count <= {max_points}) or a comma-separated list of "
        f"finite numbers{bound}"
    )

    def parse(text: str) -> np.ndarray:
        parts = text.split(":")
        if len(parts) == 3:
            try:
                count = int(parts[2])
            except ValueError:
                _refuse(text, allowed)
            if count > max_points:
                _refuse(text, allowed)
        try:
            values = parse_range("value", text)
        except GradjaxInputError:
            _refuse(text, allowed)
        if values.size > max_points:
            _refuse(text, allowed)
        if (strictly_positive and np.any(values <= 0)) or (
            minimum is not None and np.any(values < minimum)
        ):
            _refuse(text, allowed)
        return values

    parse.__name__ = "grid"
    return parse


def choice(*names: str) -> Callable[[str], str]:
    """argparse type: one of ``names`` (checked when parsed, before any work starts)."""
    return _one_of(names)


def _one_of(names: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in names:
            _refuse(text, "one of " + ", ".join(names))
        return text

    parse.__name__ = "choice"
    return parse


class LibraryNames(Sequence):
    """The names of one library table, read when argparse first needs them.

    The tables live in modules that import JAX; reading them only when a value is checked or
    ``--help`` is printed keeps ``gradjax --help`` quick.

    Args:
      module: the module holding the table, e.g. ``"gradjax.meanfield.activations"``.
      table: the table's name in it, e.g. ``"ACTIVATIONS"``; its string keys are the names.
    """

    def __init__(self, module: str, table: str) -> None:
        self.module, self.table = module, table

    def _names(self) -> tuple[str, ...]:
        table = getattr(importlib.import_module(self.module), self.table)
        return tuple(n for n in table if isinstance(n, str))

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()


def library_choice(module: str, table: str) -> dict:
    """``add_argument`` keywords for a flag whose values are the names of a library table.

    Args:
      module: the module holding the table.
      table: the table's name in it.

    Returns:
      ``{"choices": ..., "type": ...}``: the names (read lazily, see :class:`LibraryNames`)
      and the type that refuses any other value in the one-line format. ``%(choices)s`` in
      the flag's help lists them.
    """
    names = LibraryNames(module, table)
    return {"choices": names, "type": _one_of(names)}


def flag(field: str) -> str:
    """The command-line flag of a library field: ``sigma_w`` -> ``--sigma-w``."""
    return "--" + field.replace("_", "-")


def flags(*fields: str, **other_names: str) -> dict[str, str]:
    """Library field -> command-line flag, for :func:`renamed_field`.

    Args:
      *fields: fields whose flag is their name in flag form (see :func:`flag`).
      **other_names: fields whose flag is named otherwise, e.g. ``out_dir="--out"``.

    Returns:
      The mapping, ``fields`` first.
    """
    return {field: flag(field) for field in fields} | other_names


def writable_dir(path: str | os.PathLike, field: str = "--out") -> Path:
    """Creates ``path`` if needed and proves it writable, before any work starts.

    Call it after every other check of the input, so a refused command leaves nothing
    behind; a directory it had to create is empty until the work writes into it.

    Args:
      path: the output directory (non-empty).
      field: the option's name, for the error message.

    Returns:
      The directory as a :class:`~pathlib.Path`.

    Raises:
      GradjaxInputError: if it is empty, cannot be created or cannot be written.
    """
    if not str(path).strip():
        raise GradjaxInputError(
            f"{field}={str(path)!r} is invalid: expected a non-empty directory path"
        )
    directory = Path(path)
    check_path_room(directory, field)
    new = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if new:
            _CREATED.append(directory)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gradjax-write-test"):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise GradjaxInputError(
            f"{field}={_short(path)!r} is invalid: expected a writable directory ({reason})"
        ) from None
    return directory


# Output directories this process created: removed at exit while they hold no result.
_CREATED: list[Path] = []


def remove_unused_dirs() -> None:
    """Removes the output directories this run created that hold nothing but gradjax's
    bookkeeping (its owner mark, its lock): a run refused or interrupted before its first
    result leaves no empty directory behind."""
    from gradjax.sweeps.store import LOCK
    from gradjax.utils.files import OWNER_MARK

    while _CREATED:
        directory = _CREATED.pop()
        try:
            entries = list(directory.iterdir())
            if all(e.name in (OWNER_MARK, LOCK) and e.is_file() for e in entries):
                for entry in entries:
                    entry.unlink()
                directory.rmdir()
        except OSError:
            pass  # gone already, or not ours to clean: leave it


# Room the deepest file a verb writes needs below its output directory (a sweep's chunk
# "chunks/seed..-.._scale..-..-<sha256>.npz" and its temporary name).
_ROOM_BELOW = 200


def check_path_room(directory: Path, field: str) -> None:
    """Refuses, before any work, a directory whose files' paths the filesystem would refuse."""
    full = os.fsencode(os.path.abspath(directory))
    try:
        limit = os.pathconf(_existing_parent(directory), "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    if len(full) + _ROOM_BELOW > limit:
        raise GradjaxInputError(
            f"{field}={_short(directory)!r} is invalid: expected a path the filesystem can hold "
            f"files under ({len(full)} bytes; at most {limit - _ROOM_BELOW} leave room for "
            f"the {limit}-byte path limit)"
        )


def _existing_parent(directory: Path) -> Path:
    for parent in (directory, *directory.absolute().parents):
        if parent.exists():
            return parent
    return Path("/")


def _short(path: object) -> str:
    """A path for a one-line message: long ones shortened in the middle."""
    text = str(path)
    return text if len(text) <= 120 else f"{text[:50]}...{text[-50:]}"


def renamed_field(err: GradjaxInputError, names: dict[str, str]) -> GradjaxInputError:
    """The same error with a library field (``sigma_w=...``) named as its flag (``--sigma-w``).

    Args:
      err: an error raised by a library call made for the command.
      names: library field -> command-line flag.

    Returns:
      A new error whose message starts with the flag, or ``err`` itself if no name matches.
    """
    text = str(err)
    for field, flag in names.items():
        if text.startswith(field + "=") or text.startswith(field + "["):
            return GradjaxInputError(flag + text[len(field) :])
    return err
