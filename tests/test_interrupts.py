"""Ctrl-C and SIGTERM on the ``gradjax`` executable: one line, exit 130/143, never a crash.

Each run is a real process (signals cannot be tested in-process). The signal is sent once the
run shows progress (its first chunk on disk); a run that makes no progress for a long time
fails the test instead of hanging it.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWEEP = ["sweep", "--depth", "4", "--width", "8", "--seeds", "32", "--batch", "4"]
SWEEP += ["--sigma-w", "0.5:1.5:4", "--memory-budget-mb", "0.05"]
# No progress (no new chunk, process still running) for this long fails the test.
STALL_S = 240.0


def _start(out: Path, err: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    with open(err, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "gradjax.commands.cli", *SWEEP, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=f,
            env=env,
        )


def _wait_for_a_chunk(proc: subprocess.Popen, out: Path) -> None:
    start = time.monotonic()
    while proc.poll() is None and not list((out / "chunks").glob("*.npz")):
        if time.monotonic() - start > STALL_S:
            proc.kill()
            pytest.fail("no chunk appeared: the sweep made no progress")
        time.sleep(0.1)


def _finish(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=STALL_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the process did not stop after the signal")


@pytest.mark.parametrize(
    ("signals", "code"),
    [((signal.SIGINT,), 130), ((signal.SIGTERM, signal.SIGINT), 143)],
    ids=["ctrl-c", "sigterm-then-ctrl-c"],
)
def test_a_signal_stops_the_run_with_the_shell_s_code_and_keeps_its_chunks(tmp_path, signals, code):
    # One signal: stop at the next safe point. A second: stop at once, with the first's code.
    out, err = tmp_path / "run", tmp_path / "err"
    proc = _start(out, err)
    _wait_for_a_chunk(proc, out)
    if proc.poll() is not None:
        pytest.skip("the sweep finished before it could be interrupted")
    for signum in signals:
        proc.send_signal(signum)
        time.sleep(0.05)
    # Never swallowed: the code whether the run stopped at its next safe point or had
    # already computed its last chunk when the signal arrived; never a crash (negative).
    assert _finish(proc) == code
    text = err.read_text()
    assert "Traceback" not in text and "LLVM ERROR" not in text and "interrupted" in text
    # What finished before the signal is kept (a rerun resumes from it: tests/test_store.py).
    assert list((out / "chunks").glob("*.npz"))
    if len(signals) == 1 and not (out / "arrays.npz").exists():
        assert "finished pieces are saved" in text
