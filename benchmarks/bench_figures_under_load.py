"""``gradjax figures --quick`` on a busy machine: quiet, then beside one CPU-bound process.

Both runs are fresh processes of the installed command (``python -m gradjax.commands.cli figures
--quick --force`` into an empty directory), so each pays its own start-up and compilation, as
a user's run does; the competing process is a Python busy loop started just before the
loaded run and stopped after it. The ratio ``loaded_over_quiet`` says how much one other job
on the cores slows the figures job (target: at most 2x). Threads are the environment's and
gradjax's own rule (:mod:`gradjax.utils.threads`); nothing is set here.

``quick=True`` runs only the Lyapunov figure (batched QR at depth 300, the figure that was
slowest under load) instead of the whole quick set.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

from gradjax.benchmarks import harness

NAME = "figures_under_load"

BUSY_LOOP = "while True:\n    pass\n"


def _config(quick: bool) -> dict:
    return {"figures": ["lyapunov"] if quick else "all", "figure_size": "quick", "competitors": 1}


def _figures_seconds(only: list[str] | None) -> float:
    """Wall time of one ``gradjax figures --quick`` process into a fresh directory."""
    with tempfile.TemporaryDirectory(prefix="gradjax-figures-") as out:
        cmd = [
            sys.executable,
            "-m",
            "gradjax.commands.cli",
            "figures",
            "--quick",
            "--force",
            "--out",
            out,
        ]
        if only:
            cmd += ["--only", *only]
        t0 = time.perf_counter()
        # cwd=out: from a source checkout `-m` would find the source tree's `gradjax`, which
        # does not hold the installed `gradjax.paper_figs`.
        done = subprocess.run(cmd, cwd=out, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"gradjax figures exited with {done.returncode}: {tail}")
    return seconds


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns its JSON record."""
    cfg = _config(quick)
    only = None if cfg["figures"] == "all" else cfg["figures"]
    quiet = _figures_seconds(only)
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)  # the competitor is on a core before the figures start
        loaded = _figures_seconds(only)
    finally:
        busy.kill()
        busy.wait()

    def single(t: float) -> dict:
        return {"median": t, "min": t, "max": t, "repeats": 1}

    return harness.record(
        NAME,
        config=cfg,
        timings={"quiet": single(quiet), "loaded": single(loaded)},
        ratios={"loaded_over_quiet": loaded / quiet},
        targets={"loaded_over_quiet": "<= 2"},
    )


if __name__ == "__main__":
    from gradjax.utils.files import dumps_json

    print(dumps_json(run(quick="--quick" in sys.argv)))
