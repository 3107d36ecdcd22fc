"""The ``gradjax`` command: ``gradjax figures | sweep | theory | train | bench | diagnose``.

Each subcommand lives in ``gradjax/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; heavy imports happen inside ``run``, so ``gradjax --help`` is quick.
Bad input ends with one line on stderr naming the field and what is allowed, and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gradjax.utils.errors import GradjaxInputError

COMMANDS = ("figures", "sweep", "theory", "train", "bench", "diagnose")


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
        return int(args.run(args) or 0)
    except GradjaxInputError as err:
        print(f"gradjax {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gradjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
