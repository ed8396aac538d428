"""Ending the command's process without the interpreter's slow teardown.

After a run or a sweep, Python's finalization of torch's, MLflow's and matplotlib's
modules takes 1-2 s on a small machine and does nothing a user needs: every file is
written, every store committed. The command ends instead as a normal exit would up to
that point (non-daemon threads joined, every atexit handler run, the streams flushed) and
then leaves at once.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn


def run_then_exit(entry: Callable[[], object]) -> NoReturn:
    """Call `entry` (a command's main) and end the process with its exit status; a stop by
    Ctrl-C or SIGTERM is one line and the shell's status for the signal."""
    try:
        entry()
        code = 0
    except SystemExit as end:
        code = exit_status(end.code)
    except KeyboardInterrupt as stop:
        code = stopped(stop)
    leave(code)


def stopped(stop: KeyboardInterrupt) -> int:
    """Print one line for a stop by a signal, with what the code it passed through noted
    on it (the run marked KILLED, how to continue), and return 128 + the signal's number
    (130 for Ctrl-C, 143 for SIGTERM), as a shell reports a process the signal ended."""
    signum = getattr(stop, "signum", signal.SIGINT)  # a bare KeyboardInterrupt: Ctrl-C
    notes = "; ".join(getattr(stop, "__notes__", []))
    name = signal.Signals(signum).name
    print(f"Stopped by {name}" + (f": {notes}." if notes else "."), file=sys.stderr)
    return 128 + signum


def exit_status(code) -> int:
    """SystemExit's code as a status: None is 0; a message is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def leave(code: int) -> NoReturn:
    # The interpreter's own first step of an exit: threading's exit hooks (a thread pool
    # tells its idle workers to end: MLflow's artifact uploads keep one), then every
    # non-daemon thread joined. Joining without those hooks waits forever on such a pool.
    threading._shutdown()
    atexit._run_exitfuncs()  # what a normal exit runs: MLflow's end of runs, logging's flush
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to tell
            stream.flush()
    os._exit(code)
