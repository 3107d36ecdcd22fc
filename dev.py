"""Set up the project's virtual environment and run its jobs, with nothing but Python.

Usage:
    python3 dev.py test              # ruff + the whole test suite
    python3 dev.py figures [ARGS]    # every figure, numbers.json and REPORT.md in figures/
    python3 dev.py bench [ARGS]      # the benchmark suite, JSON in bench-results/
    python3 dev.py setup             # only create/refresh .venv

The environment lives in ``.venv`` and is refreshed when ``pyproject.toml`` changes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".gradjax-deps"


def _run(*cmd: str | Path) -> None:
    # Jobs run in the caller's environment: no thread or XLA variables are set here, so the
    # figures and benchmarks see what a user's process sees (gradjax chooses its own LAPACK
    # threading, see gradjax/threads.py).
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def setup() -> None:
    """Create ``.venv`` and install gradjax with its test extras (skipped when up to date)."""
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        venv.create(VENV, with_pip=True)
    pip = (BIN / "python", "-m", "pip", "install", "-q")
    _run(*pip, "--upgrade", "pip", "setuptools>=77", "wheel")
    _run(*pip, "-e", ".[test]")
    STAMP.write_text(digest)


def _install_package() -> None:
    # Tests run against the installed package, not the source tree: a fresh, non-editable
    # build catches files missing from the distribution.
    _run(BIN / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", ".")


def test(args: list[str]) -> None:
    setup()
    _install_package()
    _run(BIN / "ruff", "check", ".")
    _run(BIN / "ruff", "format", "--check", ".")
    # The tests and every docstring example of the installed package, in one run: the two
    # workers share the work (and their start-up) instead of two runs in turn.
    _run(
        BIN / "pytest",
        "-n",
        "2",
        "--doctest-modules",
        "tests/",  # a path (a "tests" package installed by a dependency is not meant)
        "--pyargs",
        "gradjax",
        *args,
    )


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0
    job, rest = argv[0], argv[1:]
    try:
        if job == "setup":
            setup()
        elif job == "test":
            test(rest)
        elif job == "figures":
            setup()
            _run(BIN / "gradjax", "figures", *(rest or ["--out", "figures"]))
        elif job == "bench":
            setup()
            _run(BIN / "gradjax", "bench", *(rest or ["--out", "bench-results"]))
        else:
            print(f"dev.py: unknown job {job!r}; expected one of: setup, test, figures, bench")
            return 2
    except subprocess.CalledProcessError as err:
        return err.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
