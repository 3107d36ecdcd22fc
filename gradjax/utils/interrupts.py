"""Ctrl-C and SIGTERM for the command line: stop at the next safe point, never crash.

A Python signal handler runs only when the main thread is between bytecodes, which it is not
while XLA compiles; a ``KeyboardInterrupt`` raised at an arbitrary point can also tear the
process down while compiler threads still run (an abort or a segfault). So the command line
(:func:`install`) lets the C-level handler write each signal to a pipe, and a watcher thread
reads it at once:

* the first SIGINT or SIGTERM asks the work to stop: long loops call :func:`check` between
  pieces (tiles of a sweep, segments of a training run, figures), which raises
  ``KeyboardInterrupt`` there, after the finished pieces are saved;
* a second signal ends the process at once (``os._exit``), exit code 130 (143 for SIGTERM).

Library code calls :func:`check` only; without :func:`install` (a user's own program) it
never raises, and Python's own Ctrl-C handling is untouched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_state = {"installed": False, "signum": 0, "count": 0}


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def requested() -> int:
    """The signal that asked to stop (0 for none)."""
    return int(_state["signum"])


def check() -> None:
    """At a safe point: raises ``KeyboardInterrupt`` if a stop was asked for."""
    if _state["signum"]:
        raise KeyboardInterrupt


def install(prog: str = "gradjax") -> None:
    """Routes SIGINT and SIGTERM to the watcher (call once, from the main thread).

    Args:
      prog: the name the messages start with.
    """
    if _state["installed"] or threading.current_thread() is not threading.main_thread():
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in (signal.SIGINT, signal.SIGTERM):
        # The Python-level handler does nothing: the watcher thread has already seen it.
        signal.signal(signum, lambda *_: None)
    threading.Thread(target=_watch, args=(read_fd, prog), daemon=True).start()
    _state["installed"] = True


def _watch(read_fd: int, prog: str) -> None:
    while True:
        data = os.read(read_fd, 64)
        for signum in data:
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            _state["count"] += 1
            if _state["count"] == 1:
                _state["signum"] = signum
                _say(f"{prog}: interrupted; stopping after the current piece (again to stop now)")
            else:
                _say(f"{prog}: stopped")
                os._exit(exit_code(_state["signum"] or signum))


def _say(message: str) -> None:
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed or full stderr must not keep the process alive
        pass
