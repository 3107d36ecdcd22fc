"""Helpers shared by the subcommands: output directories and argument types."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from gradjax.errors import GradjaxInputError


def writable_dir(path: str | os.PathLike, field: str = "--out") -> Path:
    """Creates ``path`` if needed and proves it writable, before any work starts.

    Args:
      path: the output directory.
      field: the option's name, for the error message.

    Returns:
      The directory as a :class:`~pathlib.Path`.

    Raises:
      GradjaxInputError: if it cannot be created or written.
    """
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".gradjax-write-test"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise GradjaxInputError(
            f"{field}={str(path)!r} is invalid: expected a writable directory ({reason})"
        ) from None
    return directory


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value
