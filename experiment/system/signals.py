"""SIGTERM handled like Ctrl-C, for runs and sweeps alike, and never in the middle of a
write to a store (no heavy imports here: the sweeper serves any Hydra app).

A KeyboardInterrupt raised inside a database call (MLflow's SQLite store mid-transaction)
can leave the store's connection unusable, so the run could not then be marked KILLED,
or can be swallowed by the library. Inside `deferred()` a stopping signal is held until
the block ends; a second one does not wait. A signal that comes while the code cleans up
after a stop (runs marked KILLED, workers ended) ends the process at once: whoever sends
it twice does not want to wait.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading

_deferring = 0
_pending: int | None = None
_stopping = False  # a Stopped has been raised: the code is cleaning up


class Stopped(KeyboardInterrupt):
    """The KeyboardInterrupt a stopping signal raises; `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def _interrupt(signum, frame) -> None:
    global _pending
    if _stopping:
        name = signal.Signals(signum).name
        print(f"Stopped again by {name} during the cleanup: ended at once.", file=sys.stderr)
        # Worker processes and torchrun groups end with their parent (workers.py, groups.py).
        os._exit(128 + signum)
    if _deferring and _pending is None:  # the write in progress finishes first
        _pending = signum
        return
    _stop(signum)


def _stop(signum: int):
    global _stopping
    _stopping = True
    raise Stopped(signum)


def stop_on(signum: int) -> None:
    """Make `signum` a stopping signal as well (SLURM's warning before a time limit or a
    preemption, say): raised as `Stopped`, never in the middle of a write."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signum, _interrupt)


def stop_on_sigterm() -> None:
    """Treat SIGTERM (a scheduler or `kill` ending the job) like Ctrl-C, so the run is
    closed as KILLED and a sweep stops cleanly instead of vanishing mid-write; Ctrl-C
    itself (where Python turns it into KeyboardInterrupt) waits for `deferred` blocks."""
    global _stopping
    if threading.current_thread() is not threading.main_thread():
        return
    _stopping = False
    signal.signal(signal.SIGTERM, _interrupt)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not ignored
        signal.signal(signal.SIGINT, _interrupt)


@contextlib.contextmanager
def deferred():
    """A block that a stopping signal does not cut short: it is raised when the block
    ends (as KeyboardInterrupt, as it would have been)."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending is not None:
            signum, _pending = _pending, None
            _stop(signum)


def uninterrupted(method):
    """A method run inside `deferred()`."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with deferred():
            return method(*args, **kwargs)

    return wrapper
