"""Telling a hang from a slow machine: a child fails only when it stops making progress.

:func:`run_until_stalled` runs a child process that prints a line after each unit of real
work; the parent fails only when nothing new arrives for ``stall_s`` seconds, never because
the whole run took long on a busy machine. Once the child has printed its completion
marker, the work is done: a slow exit is not a hang.
"""

import subprocess
import sys
import threading
import time


def run_until_stalled(
    args,
    *,
    env=None,
    stall_s: float = 180.0,
    done_marker: str = "done",
    exit_grace_s: float = 60.0,
    poll_s: float = 0.2,
):
    """Runs ``args``; raises AssertionError if it prints nothing new for ``stall_s`` seconds.

    Args:
      args: the child's command line.
      env: its environment.
      stall_s: the longest silence (no new line on stdout or stderr) allowed.
      done_marker: a stdout line meaning the work finished.
      exit_grace_s: after the marker, how long to wait for the exit before killing it.
      poll_s: polling interval.

    Returns:
      ``(returncode, stdout, stderr)``; the return code is 0 for a child killed after its
      marker (its work had finished).
    """
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    lines = {"out": [], "err": []}
    last = [time.monotonic()]
    finished = threading.Event()

    def pump(stream, sink):
        for line in stream:
            sink.append(line)
            last[0] = time.monotonic()
            if sink is lines["out"] and line.strip() == done_marker:
                finished.set()

    pumps = [
        threading.Thread(target=pump, args=(proc.stdout, lines["out"]), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, lines["err"]), daemon=True),
    ]
    for t in pumps:
        t.start()
    try:
        rc = _watch(proc, lines, last, finished, stall_s, exit_grace_s, poll_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for t in pumps:
            t.join(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    return rc, "".join(lines["out"]), "".join(lines["err"])


def _watch(proc, lines, last, finished, stall_s, exit_grace_s, poll_s):
    done_at = None
    while proc.poll() is None:
        now = time.monotonic()
        if finished.is_set():
            done_at = done_at or now
            if now - done_at > exit_grace_s:  # the work is done; only the exit is slow
                proc.kill()
                return 0
        elif now - last[0] > stall_s:
            proc.kill()
            tail = "".join(lines["out"][-5:] + lines["err"][-5:])[-2000:]
            raise AssertionError(f"no progress for {stall_s:g} s (a hang); last output:\n{tail}")
        time.sleep(poll_s)
    return proc.returncode


def _child(code: str):
    return [sys.executable, "-c", code]


def test_a_slow_child_that_keeps_progressing_passes():
    # 12 steps of 0.25 s: 3 s in all, longer than the 1.5 s allowed silence.
    code = (
        "import time\n"
        "for i in range(12):\n"
        "    time.sleep(0.25); print('step', i, flush=True)\n"
        "print('done', flush=True)\n"
    )
    start = time.monotonic()
    rc, out, _ = run_until_stalled(_child(code), stall_s=1.5)
    assert rc == 0 and out.split("\n")[-2] == "done"
    assert out.count("step") == 12
    assert time.monotonic() - start > 1.5  # longer than the silence allowed, and still fine


def test_a_child_that_stops_progressing_is_a_hang():
    code = "import time\nprint('step 0', flush=True)\ntime.sleep(60)\nprint('done')\n"
    start = time.monotonic()
    try:
        run_until_stalled(_child(code), stall_s=1.5)
    except AssertionError as err:
        assert "no progress for 1.5 s" in str(err) and "step 0" in str(err)
    else:
        raise AssertionError("a silent child was not reported as a hang")
    assert time.monotonic() - start < 30  # found by its silence, not by the 60 s sleep


def test_a_slow_exit_after_the_work_is_not_a_hang():
    code = "import time\nprint('done', flush=True)\ntime.sleep(60)\n"
    start = time.monotonic()
    rc, out, _ = run_until_stalled(_child(code), stall_s=1.0, exit_grace_s=1.0)
    assert rc == 0 and "done" in out
    assert time.monotonic() - start < 30
