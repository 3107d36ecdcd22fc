"""Reliability: bad input over the six verbs, and kill / corrupt / concurrent sweep trials.

Every case runs ``python -m gradjax.commands.cli VERB ...`` as a user would, in its own empty
working
directory, and is classified:

* ``refused_cleanly``: exit status 2, exactly one line on stderr, no traceback, and nothing
  written (neither ``--out`` nor anything in the working directory);
* ``tracebacks``: a Python traceback on stderr (target 0);
* ``aborts``: killed by a signal or exit status >= 128, e.g. an XLA check failure (target 0);
* ``timeouts``: still running after ``CASE_TIMEOUT_S`` (a size neither refused nor run);
* ``other``: anything else (accepted and ran, several lines, an empty directory left, ...).

The trials run one small sweep uninterrupted as the reference, then the same sweep
SIGKILLed mid-run and resumed (twice, the second kill later in the run), a copy of the
finished reference with a chunk truncated / zero-filled / emptied or the manifest garbled
rerun, and two concurrent runs on one directory; ``differing_results`` counts the trials
whose final ``arrays.npz`` is not bit for bit the reference's (or that ended without one).
Every sweep process spends some twenty seconds of CPU compiling, so the trials are about
a dozen processes, two at a time.

Then the trial families of :mod:`gradjax.benchmarks.reliability_trials` (interrupts during
compilation, swapped chunks, concurrent verbs, foreign files, damaged directories, full disk,
environment, degenerate inputs), each counted on its own in the JSON (``families``).

``--quick`` runs every fourth bad-input case, one kill, two kinds of damage (truncated chunk,
garbled manifest), the concurrent trial and every fourth case of each family.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gradjax.benchmarks import harness, reliability_trials
from gradjax.benchmarks.reliability_trials import SWEEP_SMALL, arrays, env

NAME = "reliability"

INTS = ["0", "-1", "1.5", "abc", "", "99999999999999999999"]
SEEDS = ["-1", "1.5", "abc", "", "99999999999999999999", str(2**63)]  # 0 is a valid seed
REALS = ["nan", "inf", "-1", "x"]
GRIDS = ["-1,1", "nan", "inf", "1:2", "0:1:100000000", "a,b", "", "1:2:0", "1:2:x"]
# A bad input is refused in about a second; a case running longer than this is not refused
# (a huge sweep runs with progress until killed here: waiting longer would tell no more).
CASE_TIMEOUT_S = 30.0


def bad_inputs() -> list[tuple[str, list[str]]]:
    """Every bad command line tried: ``(verb, arguments without --out)``."""
    cases: list[tuple[str, list[str]]] = []

    def ints(verb, flags, values=INTS):
        cases.extend((verb, [f"{flag}={v}"]) for flag in flags for v in values)

    def reals(verb, flags, values=REALS):
        cases.extend((verb, [f"{flag}={v}"]) for flag in flags for v in values)

    ints("sweep", ["--depth", "--width", "--seeds", "--batch", "--devices"])
    reals("sweep", ["--sigma-w", "--sigma-b"], GRIDS)
    reals("sweep", ["--memory-budget-mb"], ["0", "-5", "nan", "inf", "x"])
    cases += [
        ("sweep", ["--activation", "sigmod"]),
        ("sweep", ["--init", "xavier"]),
        ("sweep", ["--coordinator", "localhost:1234"]),
        ("sweep", [*SWEEP_SMALL[:4], "--width", "1000000"]),
        ("sweep", ["--depth", "100000", "--width", "8"]),
        ("sweep", ["--seeds", "10000000", "--depth", "4", "--width", "8"]),
    ]
    ints("train", ["--depth", "--width", "--seeds", "--steps", "--batch-size"])
    ints("train", ["--seed"], SEEDS)
    ints("train", ["--warmup"], ["-1", "1.5", "abc", "99999999999999999999"])
    reals("train", ["--lr", "--sigma-w", "--clip", "--weight-decay", "--l1"])
    cases += [
        ("train", ["--optimizer", "rmsprop"]),
        ("train", ["--dataset", "mnist"]),
        ("train", ["--activation", "sigmod"]),
        ("train", ["--init", "xavier"]),
        ("train", ["--steps", "1000000000", "--no-progress"]),
        ("train", ["--depth", "100000"]),
    ]
    ints("diagnose", ["--depth", "--width", "--batch"])
    ints("diagnose", ["--seed"], SEEDS)
    reals("diagnose", ["--sigma-w", "--sigma-b", "--lr"])
    cases += [
        ("diagnose", ["--activation", "sigmod"]),
        ("diagnose", ["--init", "xavier"]),
        ("diagnose", ["--norm", "group"]),
        ("diagnose", ["--residual", "dense"]),
        ("diagnose", ["--optimizer", "rmsprop"]),
        ("diagnose", ["--example", "resnet9000"]),
        ("diagnose", ["--example", "cnn_digits", "--depth", "3"]),
        ("diagnose", ["--example", "cnn_digits", "--activation", "relu"]),
        ("diagnose", ["--example", "cnn_digits", "--sigma-w", "2"]),
        ("diagnose", ["--width", "1000000"]),
    ]
    # A user's model factory (MODULE:FACTORY): missing, malformed, or not a factory.
    for verb in ("sweep", "diagnose"):
        cases += [
            (verb, ["--model", "no_such_module_here:make"]),
            (verb, ["--model", "json"]),
            (verb, ["--model", "json:no_such_factory"]),
            (verb, ["--model", "json:dumps"]),
            (verb, ["--model", ":"]),
        ]
    cases += [("diagnose", ["--model", "json:dumps", "--example", "cnn_digits"])]
    cases += [("theory", [f"{flag}={v}"]) for flag in ("--sigma-b2", "--sigma-w2") for v in REALS]
    cases += [("theory", ["--activation", "sigmod"])]
    cases += [
        ("bench", ["--package", ""]),
        ("bench", ["--package", ".."]),
        ("bench", ["--package", "json"]),
        ("bench", ["--package", "os.path"]),
        ("bench", ["--package", "no_such_package_here"]),
        ("bench", ["no_such_benchmark"]),
        ("figures", ["--only", "no_such_figure"]),
    ]
    # --out itself: empty, and a path under a regular file.
    for verb in ("sweep", "train", "diagnose", "figures", "bench"):
        cases += [(verb, ["--out", ""]), (verb, ["--out", "file/sub"])]
    return cases


def classify(verb: str, args: list[str], *, timeout_s: float) -> str:
    """Runs one bad command line in an empty directory; returns its class (see module doc)."""
    with tempfile.TemporaryDirectory(prefix="gj-rel-") as cwd:
        cwd = Path(cwd)
        (cwd / "file").write_text("a regular file\n")  # for --out file/sub
        before = sorted(os.listdir(cwd))
        argv = [sys.executable, "-m", "gradjax.commands.cli", verb, *args]
        if verb != "theory" and "--out" not in args:
            argv += ["--out", "out"]
        try:
            run = subprocess.run(
                argv,
                cwd=cwd,
                env=env(),
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return "timeouts"
        if "Traceback (most recent call last)" in run.stderr:
            return "tracebacks"
        if run.returncode < 0 or run.returncode >= 128:
            return "aborts"
        lines = [line for line in run.stderr.splitlines() if line.strip()]
        untouched = sorted(os.listdir(cwd)) == before
        if run.returncode == 2 and len(lines) == 1 and untouched:
            return "refused_cleanly"
        return "other"


# ---------------------------------------------------------------------- sweep trials


def _sweep_argv(out: Path, extra: list[str] = ()) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gradjax.commands.cli",
        "sweep",
        *SWEEP_SMALL,
        "--sigma-w",
        "0.5,1,1.5,2",
        "--memory-budget-mb",
        "0.05",  # many small chunks: kills and damage hit a run in the middle
        "--out",
        str(out),
        *extra,
    ]


def _sweep(out: Path, timeout_s: float) -> int:
    run = subprocess.run(_sweep_argv(out), env=env(), capture_output=True, timeout=timeout_s)
    return run.returncode


def _differs(out: Path, reference: dict[str, bytes]) -> int:
    got = arrays(out)
    return int(got != reference)


def _chunks(out: Path) -> list[Path]:
    return sorted((out / "chunks").glob("*.npz"))


def trials(root: Path, *, quick: bool, timeout_s: float) -> dict[str, Any]:
    """Kill, corrupt and concurrent trials; each compared with an uninterrupted run.

    Every sweep process spends most of its time compiling, so the trials share what they
    can: a damaged directory is a copy of the finished reference (the same bytes a fresh run
    of the same command writes), and independent trials run two at a time.
    """
    ref_dir = root / "reference"
    if _sweep(ref_dir, timeout_s) != 0 or arrays(ref_dir) is None:
        return {"error": "the reference sweep failed", "differing_results": None}
    reference = arrays(ref_dir)

    def kill(i: int) -> int:
        """SIGKILL once the first chunk is on disk (later for later ``i``), then resume."""
        out = root / f"kill{i}"
        proc = subprocess.Popen(
            _sweep_argv(out),
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and not _chunks(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3 * i)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        rc = _sweep(out, timeout_s)
        return _differs(out, reference) if rc == 0 else 1

    def corrupt(name: str, damage: Callable[[Path], None]) -> int:
        """Damage a finished directory, then rerun the same command on it."""
        out = root / f"corrupt_{name}"
        shutil.copytree(ref_dir, out)
        damage(out)
        (out / "arrays.npz").unlink()  # the rerun must rebuild the result from its chunks
        rc = _sweep(out, timeout_s)
        return _differs(out, reference) if rc == 0 else 1

    def concurrent(i: int) -> int:
        """Two runs on one new directory; then a final run completes whatever is left."""
        out = root / f"concurrent{i}"
        logs = [root / f"concurrent{i}-{j}.err" for j in range(2)]
        procs = []
        for log in logs:  # stderr to files: a full pipe would stall a run's progress output
            with open(log, "wb") as f:
                procs.append(
                    subprocess.Popen(
                        _sweep_argv(out),
                        env=env(),
                        stdout=subprocess.DEVNULL,
                        stderr=f,
                    )
                )
        codes = [p.wait(timeout=timeout_s) for p in procs]
        crashed = any(c not in (0, 2) for c in codes) or any(
            b"Traceback" in log.read_bytes() for log in logs
        )
        rc = _sweep(out, timeout_s)
        return 1 if crashed or rc != 0 else _differs(out, reference)

    def truncate(out):
        chunk = _chunks(out)[0]
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])

    def zero(out):
        chunk = _chunks(out)[-1]
        chunk.write_bytes(bytes(chunk.stat().st_size))

    def garble_manifest(out):
        (out / "manifest.json").write_text('{"format": "gradjax-sweep/2", "chun')

    def empty_chunk(out):
        _chunks(out)[0].write_bytes(b"")

    damages = {"truncate": truncate, "manifest": garble_manifest}
    if not quick:
        damages.update(zero=zero, empty=empty_chunk)
    # The concurrent pair first: the other trials fill the second core around it.
    jobs: dict[str, Callable[[], int]] = {"concurrent0": functools.partial(concurrent, 0)}
    jobs.update({f"kill{i}": functools.partial(kill, i) for i in range(1 if quick else 2)})
    jobs.update({f"corrupt_{n}": functools.partial(corrupt, n, d) for n, d in damages.items()})
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
    results = {name: future.result() for name, future in futures.items()}
    return {"per_trial": results, "differing_results": int(sum(results.values()))}


def run(quick: bool = False) -> dict[str, Any]:
    """Runs the bad-input cases (two at a time) and the sweep trials; returns the record."""
    cases = bad_inputs()
    if quick:
        cases = cases[::4]
    timeout_s = CASE_TIMEOUT_S
    counts = dict.fromkeys(("refused_cleanly", "tracebacks", "aborts", "timeouts", "other"), 0)
    failures: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:
        kinds = list(pool.map(lambda c: classify(*c, timeout_s=timeout_s), cases))
    for (verb, args), kind in zip(cases, kinds, strict=True):
        counts[kind] += 1
        if kind != "refused_cleanly":
            failures.append({"verb": verb, "args": args, "class": kind})
    t_inputs = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gj-rel-trials-") as root:
        trial = trials(Path(root), quick=quick, timeout_s=600.0)
    t_trials = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gj-rel-families-") as root:
        families = reliability_trials.run_families(Path(root), quick=quick, timeout_s=300.0)
    t_families = time.perf_counter() - t0
    totals = families.get("totals", {})
    ratios = {
        "tried": len(cases) + families.get("cases", 0),
        "bad_inputs": len(cases),
        "family_cases": families.get("cases", 0),
        **counts,
        "tracebacks": counts["tracebacks"] + totals.get("tracebacks", 0),
        "crashes": counts["aborts"] + totals.get("crashes", 0),
        "differing_results": (trial["differing_results"] or 0) + totals.get("differing_results", 0),
        "overwritten_or_lost": totals.get("overwritten_or_lost", 0),
    }
    return harness.record(
        NAME,
        config={"quick": quick, "cases": len(cases), "case_timeout_s": timeout_s},
        timings={
            "bad_inputs": {"median": t_inputs, "min": t_inputs, "max": t_inputs, "repeats": 1},
            "trials": {"median": t_trials, "min": t_trials, "max": t_trials, "repeats": 1},
            "families": {"median": t_families, "min": t_families, "max": t_families, "repeats": 1},
        },
        ratios=ratios,
        targets={
            "tracebacks": "<= 0",
            "crashes": "<= 0",
            "differing_results": "<= 0",
            "overwritten_or_lost": "<= 0",
            "tried": ">= 300" if not quick else "report",
            "family_cases": ">= 100" if not quick else "report",
        },
        extra={"not_refused_cleanly": failures, "trials": trial, "families": families},
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
