"""``gradjax bench [NAME ...] [--out DIR] [--quick]``: run the benchmark suite, one JSON each.

Benchmarks are the modules ``bench_<name>.py`` of the ``gradjax.benchmarks`` package (the
repository's ``benchmarks/`` folder, installed under gradjax's namespace; found with
:mod:`pkgutil`, so adding one touches no other file); each exposes ``NAME`` and
``run(quick=False) -> dict`` and the runner writes ``DIR/<NAME>.json`` with
``gradjax.benchmarks.harness.write``, then prints a Markdown table of the ratios and targets.
The runner sets no environment or thread variables: every benchmark runs in the environment
a user has, and its JSON records the thread settings it found.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from typing import Any

from gradjax.commands.common import writable_dir
from gradjax.utils.errors import GradjaxInputError, invalid

PREFIX = "bench_"
SUITE = "gradjax.benchmarks"
REQUIRED_KEYS = ("name", "config", "machine", "timings_s", "ratios", "targets")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite and write one JSON per benchmark",
        description="Runs benchmarks (all, or those named), each jit-compiled with compilation "
        "excluded and its baseline timed in the same run, and writes DIR/NAME.json with the "
        "machine, JAX version, devices, median timings and the ratios it is judged by.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default all)")
    p.add_argument("--out", default="bench-results", help="output directory (bench-results)")
    p.add_argument("--quick", action="store_true", help="small sizes through the same code")
    p.add_argument(
        "--package",
        default=SUITE,
        help=f"importable package holding the bench_<name>.py modules (default {SUITE})",
    )
    p.set_defaults(run=run)


def discover(package: str = SUITE) -> dict[str, str]:
    """Benchmark name -> module name for every ``bench_<name>`` module of ``package``.

    Modules are listed, not imported, so discovery is cheap and one broken benchmark does
    not hide the others.

    Args:
      package: an importable package name.

    Returns:
      ``{name: "package.bench_name"}``, sorted by name.

    Raises:
      GradjaxInputError: if ``package`` is not a dotted name, cannot be imported, is not a
        package or holds no benchmark.
    """
    if not package or not all(part.isidentifier() for part in package.split(".")):
        raise invalid("--package", package, "a dotted package name such as gradjax.benchmarks")
    try:
        pkg = importlib.import_module(package)
    except ImportError:
        raise invalid(
            "--package", package, "an importable package of bench_<name> modules"
        ) from None
    if not hasattr(pkg, "__path__"):
        raise invalid("--package", package, "a package (a directory), not a module")
    found = {
        info.name[len(PREFIX) :]: f"{package}.{info.name}"
        for info in pkgutil.iter_modules(pkg.__path__)
        if info.name.startswith(PREFIX) and not info.ispkg
    }
    if not found:  # running nothing and exiting 0 would look like a passing suite
        raise invalid("--package", package, "a package holding bench_<name>.py modules")
    return dict(sorted(found.items()))


def run_benchmark(module_name: str, *, quick: bool) -> dict[str, Any]:
    """Imports one benchmark module, runs it, checks its record and adds its wall time.

    Args:
      module_name: e.g. ``"gradjax.benchmarks.bench_sweep_spectra"``.
      quick: run the small configuration.

    Returns:
      The benchmark's JSON record (with ``wall_s``).

    Raises:
      ValueError: if the module's record does not follow the JSON layout.
    """
    module = importlib.import_module(module_name)
    expected = module_name.rsplit(".", 1)[1][len(PREFIX) :]
    if getattr(module, "NAME", None) != expected:
        raise ValueError(
            f"{module_name}.NAME is {getattr(module, 'NAME', None)!r}, not {expected!r}"
        )
    t0 = time.perf_counter()
    record = module.run(quick=quick)
    wall = time.perf_counter() - t0
    if not isinstance(record, dict):
        raise ValueError(f"{module_name}.run returned {type(record).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise ValueError(f"{module_name}.run's record lacks {', '.join(missing)}")
    if record["name"] != expected:
        raise ValueError(
            f"{module_name}.run's record is named {record['name']!r}, not {expected!r}"
        )
    record = dict(record)
    record.setdefault("wall_s", wall)
    record.setdefault("quick", quick)
    return record


def run(args: argparse.Namespace) -> int:
    available = discover(args.package)
    unknown = [n for n in args.names if n not in available]
    if unknown:
        allowed = ", ".join(available) if available else f"(none found in {args.package})"
        raise GradjaxInputError(
            f"NAME={unknown[0]!r} is invalid: expected one of the benchmarks: {allowed}"
        )
    names = list(dict.fromkeys(args.names)) or list(available)
    out = writable_dir(args.out)

    from gradjax.benchmarks import harness

    rows, failed = [], []
    for name in names:
        print(f"gradjax bench: running {name}{' (quick)' if args.quick else ''}", file=sys.stderr)
        try:
            record = run_benchmark(available[name], quick=args.quick)
        except GradjaxInputError:
            raise
        except Exception as err:  # one failing benchmark must not lose the others' results
            traceback.print_exc(file=sys.stderr)
            failed.append(name)
            rows.append((name, None, f"FAILED: {type(err).__name__}: {err}"))
            continue
        path = harness.write(record, out)
        rows.append((name, record, str(path)))
    print(summary_table(rows))
    if failed:
        print(f"gradjax bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.3g}"
    return str(value)


def summary_table(rows: list[tuple[str, dict[str, Any] | None, str]]) -> str:
    """A Markdown table: one row per (benchmark, ratio), with its target and whether it is met.

    Args:
      rows: ``(name, record or None if it failed, output path or failure text)``.

    Returns:
      The table as text (it is also the format of the table in ``benchmarks/README.md``).
    """
    lines = [
        "| benchmark | ratio | value | target | met | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name, record, where in rows:
        if record is None:
            lines.append(f"| {name} | {where} | | | | |")
            continue
        keys = list(record["ratios"]) + [k for k in record["targets"] if k not in record["ratios"]]
        accuracy = record.get("accuracy") or {}
        keys += [k for k in accuracy if k not in keys]
        met = record.get("targets_met", {})
        wall = _fmt(record.get("wall_s"))
        if not keys:
            lines.append(f"| {name} | | | | | {wall} |")
        for i, key in enumerate(keys):
            value = record["ratios"].get(key, accuracy.get(key))
            lines.append(
                f"| {name if i == 0 else ''} | {key} | {_fmt(value)} | "
                f"{record['targets'].get(key, '')} | {_fmt(met.get(key, ''))} | "
                f"{wall if i == 0 else ''} |"
            )
    return "\n".join(lines)
