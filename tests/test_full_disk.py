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

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

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
    sweep_args,
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
        # Room for two checkpoints and a half: epoch 1 writes best.pt and last.pt (files of
        # their own), the next write (the new best.pt or last.pt, beside the old files)
        # finds no room.
        filler = fill_leaving(disk, int(2.5 * size))
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


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_a_full_artifact_store_loses_no_trial_and_the_same_command_finishes_the_sweep(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    with small_disk(tmp_path / "artifacts", size_kb=4096) as disk:
        tracking = [
            f"tracking.uri={sqlite_uri(tmp_path)}",
            f"tracking.artifact_root={disk}",
            "tracking.log_model=true",
            "tracking.log_plots=false",
        ]
        args = sweep_args(storage, tracking, n_trials=2)
        filler = fill_leaving(disk, 8 * 1024)  # no room for a logged model

        full = run_cli(args, tmp_path, split_stderr=True)

        assert full.returncode == 2, output(full)
        assert "Traceback" not in output(full)
        (line,) = [x for x in full.stderr.splitlines() if "SweepError" in x]
        assert "The sweep stopped: trial 0 was lost" in line and "no space left" in line
        assert "does not count toward n_trials" in line and "same command continues" in line
        study = optuna.load_study(study_name="test-study", storage=storage)
        lost, *queued = study.trials  # the sweep stopped at the first lost trial
        assert [t.state for t in queued] == [TrialState.WAITING]  # its retry, queued
        assert lost.state == TrialState.FAIL and "no space left" in lost.system_attrs["fail_reason"]
        runs = all_runs(sqlite_uri(tmp_path))
        parent = next(r for r in runs if r.data.tags.get("sweep.parent") == "true")
        assert parent.info.status == "FAILED"  # its end written though its artifacts failed
        assert not [r for r in runs if r.info.status == "RUNNING"]
        # The model upload cut short is marked FAILED and left no file behind.
        models = MlflowClient(sqlite_uri(tmp_path)).search_logged_models(
            experiment_ids=[parent.info.experiment_id]
        )
        assert [str(m.status) for m in models] == ["FAILED"]
        assert not list(disk.rglob("model.pth"))

        filler.unlink()
        finished = run_cli(args, tmp_path)

    assert finished.returncode == 0, output(finished)
    study = optuna.load_study(study_name="test-study", storage=storage)
    counted = [t for t in study.trials if t.number != lost.number]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * 2, output(finished)[-3000:]
    assert counted[0].user_attrs["retry_of"] == lost.number
    runs = all_runs(sqlite_uri(tmp_path))
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len(runs) == 3  # the parent, the lost trial's run continued by its retry, trial 2
