"""What `trainer.resume` makes of a run's checkpoint folder: real checkpoints written by
the loop, damaged on disk; a real lock held by another live process."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest

from experiment.training import resume
from experiment.training.callbacks import Checkpointer
from experiment.training.checkpoint import BEST, LAST
from experiment.training.run_lock import LOCK, FolderInUse, RunLock, read_owner
from tests.test_engine import parts_and_settings, train

FINGERPRINT = "f" * 40


def trained_folder(folder, epochs=3):
    """A run folder as a killed run leaves it: checkpoints after `epochs` epochs (the last
    one not improving), and its run.lock naming the MLflow run."""
    parts, settings = parts_and_settings(epochs=epochs)
    with RunLock(folder, FINGERPRINT).hold() as lock:
        lock.record("run-1")
        save = Checkpointer(
            folder,
            parts.model,
            parts.optimizer,
            parts.scheduler,
            fingerprint=FINGERPRINT,
            mlflow_run_id="run-1",
        )
        state = train(parts, settings, [save])
        state.epoch += 1  # one more epoch, no better: last.pt moves on, best.pt stays
        state.history.append(state.history[-1])
        save(state)
    return state


def test_a_damaged_last_checkpoint_falls_back_to_best_then_to_epoch_one_in_the_same_run(
    tmp_path, caplog
):
    tmp_path = tmp_path / "outputs" / "run"
    state = trained_folder(tmp_path)
    caplog.set_level(logging.INFO)
    point = resume.find("auto", FINGERPRINT, tmp_path, None)
    assert point.next_epoch == state.epoch + 1 and point.mlflow_run_id == "run-1"

    (tmp_path / LAST).write_bytes((tmp_path / LAST).read_bytes()[:100])  # cut short
    point = resume.find("auto", FINGERPRINT, tmp_path, None)
    assert point.next_epoch == state.best_epoch + 1 and point.mlflow_run_id == "run-1"
    assert f"{LAST}" in caplog.text and "continuing from best.pt instead" in caplog.text

    (tmp_path / BEST).write_bytes(b"")  # both damaged: the same run, from epoch 1
    caplog.clear()
    point = resume.find("auto", FINGERPRINT, tmp_path, None)
    assert point.checkpoint is None and point.next_epoch == 0
    assert point.folder == tmp_path and point.mlflow_run_id == "run-1"
    assert "restarting the run at epoch 1 in its MLflow run run-1" in caplog.text

    # Killed before its first checkpoint: only run.lock, and it is enough.
    (tmp_path / LAST).unlink()
    (tmp_path / BEST).unlink()
    # Found where Hydra put it (trainer.resume_dir), from a new run's own folder.
    point = resume.find("auto", FINGERPRINT, tmp_path / "new_run", tmp_path.parent)
    assert point.folder == tmp_path and point.mlflow_run_id == "run-1"
    # Another configuration's folder is not this run's to continue.
    assert resume.find("auto", "0" * 40, tmp_path, None) is None


def test_a_folder_whose_writer_is_alive_is_refused_naming_it(tmp_path):
    trained_folder(tmp_path, epochs=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from experiment.training.run_lock import RunLock\n"
            f"lock = RunLock({str(tmp_path)!r}, {FINGERPRINT!r}).hold()\n"
            "lock.record('run-1')\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        owner = read_owner(tmp_path)
        assert (owner.pid, owner.host) == (holder.pid, socket.gethostname())
        for attempt in (
            lambda: resume.find("auto", FINGERPRINT, tmp_path, None),
            lambda: resume.find(str(tmp_path / LAST), FINGERPRINT, tmp_path, None),
            lambda: RunLock(tmp_path, FINGERPRINT).hold(),  # a new run in the same folder
        ):
            with pytest.raises(FolderInUse) as refused:
                attempt()
            message = str(refused.value)
            assert f"process {holder.pid} on {socket.gethostname()} (MLflow run run-1)" in message
            assert str(tmp_path) in message and "trainer.checkpoint_dir" in message
    finally:
        holder.kill()
        holder.wait()
    # Its writer dead (however it died), the folder is free: the run continues.
    assert resume.find("auto", FINGERPRINT, tmp_path, None).mlflow_run_id == "run-1"
    with RunLock(tmp_path, FINGERPRINT).hold():
        assert (tmp_path / LOCK).exists()


def test_a_folder_whose_run_never_started_is_not_continued(tmp_path):
    # A run refused after it took its folder (bad data, say): nothing to continue there.
    with RunLock(tmp_path, FINGERPRINT).hold():
        pass
    assert read_owner(tmp_path).mlflow_run_id is None
    assert resume.find("auto", FINGERPRINT, tmp_path, None) is None
