"""The ``gradjax`` command: ``gradjax figures | sweep | theory | train | bench | diagnose``.

Each subcommand lives in ``gradjax/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; heavy imports happen inside ``run``, so ``gradjax --help`` is quick.
Bad input ends with one line on stderr naming the field and what is allowed, and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from gradjax.utils.errors import GradjaxInputError

COMMANDS = ("figures", "sweep", "theory", "train", "bench", "diagnose")
# The verbs that draw figures: their matplotlib backend is checked before any work.
DRAWING = ("figures", "sweep", "train", "diagnose")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    from gradjax.commands.common import Parser  # one-line usage errors, exit 2

    parser = Parser(
        prog="gradjax",
        description="Measure, explain and fix vanishing and exploding gradients.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"gradjax.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"gradjax.commands.{name}":
                continue  # a subcommand that is not part of this installation
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    try:
        _check_backend()
        if args.command in DRAWING:
            _check_plot_backend()
        return int(args.run(args) or 0)
    except GradjaxInputError as err:
        print(f"gradjax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # A full disk, a quota, a damaged output folder: one line naming it. Every file
        # gradjax writes is written atomically, so what finished is still on disk.
        print(
            f"gradjax {args.command}: error: {_os_problem(err)} (finished pieces are saved; "
            "fix this and rerun the same command to continue)",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        from gradjax.utils import interrupts

        print(
            f"gradjax {args.command}: interrupted; finished pieces are saved (rerun the same "
            "command to continue)",
            file=sys.stderr,
        )
        return interrupts.exit_code(interrupts.requested() or 2)
    finally:
        from gradjax.commands.common import remove_unused_dirs

        remove_unused_dirs()


def _os_problem(err: OSError) -> str:
    """What the filesystem refused, in words, naming the path gradjax meant (the target of
    an atomic replace, not its temporary file)."""
    import errno

    path = getattr(err, "filename2", None) or getattr(err, "filename", None)
    if path is None:
        return err.strerror or type(err).__name__
    if err.errno == errno.EISDIR:
        return f"{path} is a folder where gradjax writes a file"
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{path} is a file where gradjax keeps a folder"
    return f"{err.strerror or type(err).__name__}: {path}"


def _check_backend() -> None:
    """A ``JAX_PLATFORMS`` this machine cannot start is one line, before any work."""
    wanted = os.environ.get("JAX_PLATFORMS")
    if not wanted:
        return
    import jax

    try:
        jax.devices()
    except Exception as err:  # RuntimeError or AssertionError, by JAX version and platform
        from gradjax.utils.errors import first_line

        raise GradjaxInputError(
            f"JAX_PLATFORMS={wanted!r} is invalid: expected a backend this machine can start "
            f"(unset it or name one this machine has; JAX said: {first_line(err)})"
        ) from None


def _check_plot_backend() -> None:
    """An ``MPLBACKEND`` matplotlib cannot use is one line, before any work (not after a
    long computation, when the first figure is drawn)."""
    wanted = os.environ.get("MPLBACKEND")
    if not wanted:
        return
    try:
        import matplotlib.rcsetup

        matplotlib.rcsetup.validate_backend(wanted)  # an unknown name, whatever is loaded
        import matplotlib.pyplot as plt

        plt.close(plt.figure())
    except Exception as err:  # ValueError (unknown name) or ImportError (missing toolkit)
        from gradjax.utils.errors import first_line

        raise GradjaxInputError(
            f"MPLBACKEND={wanted!r} is invalid: expected a matplotlib backend this machine can "
            f"use, e.g. Agg (unset it or name another; matplotlib said: {first_line(err)})"
        ) from None


def console() -> None:
    """The ``gradjax`` executable: :func:`main` with Ctrl-C and SIGTERM handled by
    :mod:`gradjax.utils.interrupts` (stop at a safe point; a second signal stops at once)."""
    from gradjax.utils import interrupts

    interrupts.install()
    code = main()
    if interrupts.requested():
        # No interpreter teardown after an interrupt: compiler threads may still be running,
        # and tearing down under them is what crashed. Everything finished is on disk.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(interrupts.exit_code(interrupts.requested()))
    sys.exit(code)


if __name__ == "__main__":
    console()
