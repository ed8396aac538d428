"""`trainer.resume`: continue a killed run from its last checkpoint, in the same MLflow run.

`trainer.resume=auto` looks for the newest unfinished `last.pt` of a run with the same
configuration: first in `trainer.checkpoint_dir`, then under `trainer.resume_dir` (where
Hydra puts run folders, `outputs/` by default). `trainer.resume=PATH` takes that
checkpoint file (or the `last.pt` in that folder) whatever its configuration.
A finished run leaves a `COMPLETE` marker next to its checkpoints: auto skips it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from experiment.errors import CheckpointError, ConfigValueError
from experiment.runtime import distributed
from experiment.sweep.protocol import LostAttempt
from experiment.training.checkpoint import LAST, Checkpoint

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"


@dataclass
class ResumePoint:
    path: Path  # the checkpoint file it continues from
    checkpoint: Checkpoint

    @property
    def next_epoch(self) -> int:
        return self.checkpoint.next_epoch

    @property
    def mlflow_run_id(self) -> str | None:
        return self.checkpoint.mlflow_run_id


def _candidates(checkpoint_dir: Path, resume_dir: Path | None) -> list[Path]:
    found = [checkpoint_dir / LAST] if (checkpoint_dir / LAST).exists() else []
    if resume_dir is not None and resume_dir.is_dir():
        others = sorted(resume_dir.rglob(LAST), key=lambda p: p.stat().st_mtime, reverse=True)
        found += [p for p in others if p not in found]
    return [p for p in found if not (p.parent / COMPLETE_MARKER).exists()]


def for_run(trial, trainer, wanted: str) -> tuple[ResumePoint | None, str | None]:
    """Where a run continues from, and the MLflow run it continues in: a sweep's retry of
    a lost trial (`trial.continues`) from that trial's last checkpoint, in its run; a run
    of its own as `trainer.resume` says; otherwise (None, None), a new run. `wanted`: the
    run's config fingerprint (RunConfig.fingerprint), what a checkpoint must match."""
    if trial.continues:
        return continue_lost_attempt(trial.continues, wanted)
    point = find_for(trainer, wanted) if trial.resumable else None
    return point, point.mlflow_run_id if point else None


def continue_lost_attempt(lost: LostAttempt, wanted: str) -> tuple[ResumePoint | None, str | None]:
    """The lost trial's last checkpoint where it is readable from here (with the lost
    trial's configuration), and its MLflow run; without one the retry restarts at
    epoch 1 in that run, and says why."""
    run_id, folder = lost.mlflow_run_id, lost.checkpoint_dir
    path = Path(folder) / LAST if folder else None
    where = f"in its MLflow run {run_id}" if run_id else "in a new MLflow run"
    if path is None or not path.is_file():
        log.warning(
            "Retry of trial %s: no checkpoint of it %s; restarting at epoch 1 %s.",
            lost.trial,
            f"at {path}" if path else "was recorded",
            where,
        )
        return None, run_id
    try:
        checkpoint = Checkpoint.load(path)
    except CheckpointError as err:
        log.warning("Retry of trial %s: %s; restarting at epoch 1 %s.", lost.trial, err, where)
        return None, run_id
    if checkpoint.fingerprint != wanted:
        log.warning(
            "Retry of trial %s: its checkpoint %s holds another configuration (the config "
            "files changed since); starting anew in a new MLflow run.",
            lost.trial,
            path,
        )
        return None, None
    point = ResumePoint(path, checkpoint)
    log.info(
        "Continuing trial %s from %s at epoch %s %s.", lost.trial, path, point.next_epoch + 1, where
    )
    return point, point.mlflow_run_id or run_id


def find_for(trainer, wanted: str) -> ResumePoint | None:
    """The checkpoint `trainer.resume` asks for (a `trainer` config node), or None.
    A run that torchrun restarted after a rank died (--max-restarts) resumes by itself."""
    search = Path(trainer.resume_dir) if trainer.resume_dir else None
    option = trainer.resume
    if option is None and distributed.restarted():
        log.info("torchrun restarted the ranks: resuming (trainer.resume=auto)")
        option = "auto"
    point = find(option, wanted, Path(trainer.checkpoint_dir), search)
    if point is not None:
        log.info("Resuming from %s at epoch %s", point.path, point.next_epoch + 1)
    return point


def find(option: str | None, wanted: str, checkpoint_dir: Path, resume_dir: Path | None):
    """The checkpoint to continue from, or None to start a new run; `auto` takes the
    newest unfinished one whose config fingerprint is `wanted`."""
    if option in (None, "", "never"):
        return None
    if option != "auto":
        path = Path(option).expanduser()
        path = path / LAST if path.is_dir() else path
        if not path.is_file():
            raise ConfigValueError(
                "trainer.resume", option, "'auto', null, or an existing checkpoint file/folder"
            )
        return ResumePoint(path, Checkpoint.load(path))
    for path in _candidates(checkpoint_dir, resume_dir):
        try:
            checkpoint = Checkpoint.load(path)
        except CheckpointError as err:  # a damaged file: say so, look further
            log.warning("Skipping it: %s", err)
            continue
        if checkpoint.fingerprint == wanted:
            return ResumePoint(path, checkpoint)
    log.info("trainer.resume=auto: no unfinished run with this configuration; starting anew.")
    return None


def mark_complete(checkpoint_dir: Path) -> None:
    (checkpoint_dir / COMPLETE_MARKER).touch()
