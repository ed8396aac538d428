"""What the retry of a lost trial continues from (resume.continue_lost_attempt): the lost
trial's last checkpoint where it is readable and of the same configuration, and the lost
trial's MLflow run in every case but a changed configuration. Real checkpoint files."""

from __future__ import annotations

import logging

import torch

from experiment.sweep.protocol import LostAttempt
from experiment.training.checkpoint import LAST, Checkpoint
from experiment.training.engine import FitState
from experiment.training.resume import continue_lost_attempt

RUN_ID = "0123456789abcdef"


def write_checkpoint(folder, fingerprint: str, epoch: int = 4) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = [{"val/loss": 1.0 / (e + 1)} for e in range(epoch + 1)]
    state = FitState(
        epoch=epoch, metrics=history[-1], best_value=0.2, best_epoch=epoch, history=history
    )
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint.capture(
        state, model, optimizer, None, config={}, fingerprint=fingerprint, mlflow_run_id=RUN_ID
    )
    checkpoint.save(folder / LAST)


def lost(folder) -> LostAttempt:
    return LostAttempt(3, RUN_ID, str(folder) if folder else None)


def test_a_readable_checkpoint_of_the_same_configuration_is_continued(tmp_path):
    write_checkpoint(tmp_path / "ckpt", "same")
    point, run_id = continue_lost_attempt(lost(tmp_path / "ckpt"), "same")
    assert point.next_epoch == 5 and len(point.checkpoint.loop.history) == 5
    assert run_id == RUN_ID


def test_without_a_usable_checkpoint_the_retry_restarts_in_the_lost_run(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / LAST).write_bytes(b"not a checkpoint")
    for folder in (None, tmp_path / "empty", tmp_path / "damaged"):
        assert continue_lost_attempt(lost(folder), "same") == (None, RUN_ID)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all(
        "restarting at epoch 1 in its MLflow run" in m for m in messages
    )
    assert "was recorded" in messages[0] and str(tmp_path / "empty") in messages[1]


def test_a_checkpoint_of_another_configuration_starts_a_new_run(tmp_path, caplog):
    write_checkpoint(tmp_path / "ckpt", "before")
    assert continue_lost_attempt(lost(tmp_path / "ckpt"), "after") == (None, None)
    assert "holds another configuration" in caplog.text
