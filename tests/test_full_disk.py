"""A disk that fills up mid-run: one line naming the folder and what to do, the last good
checkpoint kept whole, and `trainer.resume=auto` continuing it in the same MLflow run once
there is space again. On a real tmpfs, mounted by the test and unmounted whatever
happens."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from experiment.training.builders import build_parts
from experiment.training.checkpoint import LAST, Checkpoint, load_checkpoint
from experiment.training.engine import FitState
from tests.conftest import (
    FAST,
    all_runs,
    output,
    run_cli,
    run_config,
    sqlite_uri,
    tracking_overrides,
)

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int):
    """A tmpfs of `size_kb` at `folder` (the machine runs the suite as root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        message = "mounting a tmpfs needs root"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)], check=True
    )
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_leaving(folder: Path, free_bytes: int) -> Path:
    """A file that leaves about `free_bytes` free on `folder`'s filesystem."""
    stats = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - free_bytes))
    return filler


def checkpoint_size(overrides: list[str]) -> int:
    """The bytes of an epoch's checkpoint of this configuration: built and saved here, its
    optimizer state made as a first step makes it."""
    run = run_config(overrides)
    parts = build_parts(run, torch.device("cpu"))
    for parameter in parts.model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    parts.optimizer.step()
    state = FitState(epoch=0, metrics={"val/loss": 1.0}, best_value=1.0, best_epoch=0)
    state.history.append(dict(state.metrics))
    checkpoint = Checkpoint.capture(
        state, parts.model, parts.optimizer, parts.scheduler, config=run.resolved
    )
    with tempfile.TemporaryDirectory() as folder:
        checkpoint.save(Path(folder) / LAST)
        return (Path(folder) / LAST).stat().st_size


def test_a_full_disk_stops_the_run_and_a_resume_continues_it_once_there_is_room(tmp_path):
    args = [*FAST, "trainer.epochs=4", "trainer.progress=quiet", *tracking_overrides(tmp_path)]
    with small_disk(tmp_path / "disk", size_kb=8192) as disk:
        size = checkpoint_size([*FAST, "trainer.checkpoint_dir=unused"])
        # Room for a checkpoint and a half: epoch 1 writes best.pt and last.pt (one file,
        # two names), the next write (the new best.pt or last.pt, beside the old file)
        # finds no room.
        filler = fill_leaving(disk, int(1.5 * size))
        checkpoints = disk / "checkpoints"
        run = [*args, f"trainer.checkpoint_dir={checkpoints}"]

        full = run_cli(run, tmp_path, split_stderr=True)

        assert full.returncode == 2, output(full)
        assert "Traceback" not in full.stdout + full.stderr
        errors = [line for line in full.stderr.splitlines() if "WriteError" in line]
        assert len(errors) == 1, full.stderr
        assert str(checkpoints) in errors[0] and "the disk is full" in errors[0]
        assert "trainer.resume=auto" in errors[0]
        assert load_checkpoint(checkpoints / LAST)["epoch"] == 0  # whole, and loadable
        assert not [p for p in checkpoints.iterdir() if p.name.startswith(".")]  # no leftovers
        (failed,) = all_runs(sqlite_uri(tmp_path))
        assert failed.info.status == "FAILED"

        filler.unlink()
        resumed = run_cli([*run, "trainer.resume=auto"], tmp_path)

    assert resumed.returncode == 0, output(resumed)
    (finished,) = all_runs(sqlite_uri(tmp_path))  # the same run, continued
    assert finished.info.run_id == failed.info.run_id and finished.info.status == "FINISHED"
    history = MlflowClient(sqlite_uri(tmp_path)).get_metric_history(
        finished.info.run_id, "val/loss"
    )
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
