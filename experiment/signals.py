"""SIGTERM handled like Ctrl-C, for runs and sweeps alike (no heavy imports here: the
sweeper serves any Hydra app)."""

from __future__ import annotations

import signal
import threading


def stop_on_sigterm() -> None:
    """Treat SIGTERM (a scheduler or `kill` ending the job) like Ctrl-C, so the run is
    closed as KILLED and a sweep stops cleanly instead of vanishing mid-write."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
