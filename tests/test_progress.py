"""What the console shows: a progress bar on a terminal, plain epoch lines elsewhere, and
the sweep's table of trials."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import termios

import optuna
import pytest

from experiment.sweep.reporting import summary_table
from tests.conftest import FAST, output, run_cli, start_cli


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar_and_no_epoch_lines(tmp_path):
    main, terminal = pty.openpty()  # a real terminal for the run's stdout and stderr
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = start_cli([*FAST, "trainer.epochs=3", "tracking=none"], tmp_path, stdout=terminal)
    os.close(terminal)
    text = _read_all(main)
    os.close(main)
    assert proc.wait(timeout=120) == 0, text
    assert "3/3" in text and "epoch" in text and "val/acc=" in text, text
    assert "train/loss=" in text
    assert "epoch 1/3  train/loss" not in text  # the bar replaces the lines


@pytest.mark.slow
def test_without_a_terminal_each_epoch_is_one_plain_line(tmp_path):
    proc = run_cli([*FAST, "trainer.epochs=3", "tracking=none"], tmp_path)
    assert proc.returncode == 0, output(proc)
    lines = [line for line in output(proc).splitlines() if "  train/loss " in line]
    assert [line.split("epoch ")[1].split()[0] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "\r" not in output(proc)  # no bar redraws in a log file


def test_summary_table_lists_trials_best_first():
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.9, 0.7):
        trial = study.ask()
        trial.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
        study.tell(trial, value)
    failed = study.ask()
    failed.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    lines = summary_table(study).splitlines()
    assert lines[0].split() == ["trial", "state", "value", "seconds", "optimizer.lr"]
    assert [line.split()[:3] for line in lines[1:4]] == [
        ["1", "COMPLETE", "0.9000"],
        ["2", "COMPLETE", "0.7000"],
        ["0", "COMPLETE", "0.5000"],
    ]
    assert lines[4].split()[:2] == ["3", "FAIL"]
