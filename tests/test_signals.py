"""A stopping signal never cuts a store write in half: it waits for the write's end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from experiment.system import signals


@pytest.fixture
def handlers():
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    # Ctrl-C as a terminal delivers it (a suite started in the background ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signals.stop_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, saved[0])
    signal.signal(signal.SIGINT, saved[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_inside_a_deferred_block_is_raised_when_the_block_ends(handlers, signum):
    done = []
    with pytest.raises(KeyboardInterrupt), signals.deferred():
        os.kill(os.getpid(), signum)
        done.append("the write finished")
    assert done == ["the write finished"]


def test_a_second_signal_does_not_wait(handlers):
    done = []
    with pytest.raises(KeyboardInterrupt), signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("not reached")
    assert done == []
    with signals.deferred():  # nothing left pending
        pass


def test_outside_a_deferred_block_a_signal_stops_at_once(handlers):
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")


def test_a_signal_during_the_cleanup_after_a_stop_ends_the_process_at_once(tmp_path):
    # The cleanup (a run marked KILLED, workers ended) is given a first signal's stop; a
    # second one does not wait for it.
    script = """
import os, signal, time
from experiment.system import process_exit, signals

def main():
    signals.stop_on_sigterm()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        print("cleaning up", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        print("cleanup finished", flush=True)

process_exit.run_then_exit(main)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout == "cleaning up\n"
    assert proc.stderr == "Stopped again by SIGTERM during the cleanup: ended at once.\n"
