"""The command's quick exit: what a normal exit does, then no interpreter teardown."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import atexit, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from experiment.system.process_exit import run_then_exit

def note(text):
    with open(sys.argv[1], "a") as file:
        file.write(text + "\\n")

atexit.register(note, "atexit ran")

def main():
    print("to stdout, unflushed", end="")
    # A pool left open with an idle worker (as MLflow's artifact repository keeps one):
    # a normal exit tells it to end.
    global pool
    pool = ThreadPoolExecutor(1)
    pool.submit(note, "pool task").result()
    def late():
        time.sleep(0.3)
        note("thread finished")
    threading.Thread(target=late).start()
    {ending}

run_then_exit(main)
"""


@pytest.mark.parametrize(
    ("ending", "code", "stderr"),
    [("return 1.5", 0, ""), ("sys.exit(3)", 3, ""), ("sys.exit('no data here')", 1, "no data")],
)
def test_the_command_exits_with_its_status_after_what_a_normal_exit_runs(
    tmp_path, ending, code, stderr
):
    notes = tmp_path / "notes.txt"
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM.replace("{ending}", ending), str(notes)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    assert stderr in proc.stderr
    assert proc.stdout == "to stdout, unflushed"
    # The non-daemon thread was joined before the atexit handlers ran.
    assert notes.read_text().splitlines() == ["pool task", "thread finished", "atexit ran"]
