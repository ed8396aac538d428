"""`trainer.resume`: continue a killed run from its last checkpoint, in the same MLflow run.

`trainer.resume=auto` looks for the newest unfinished run folder of a run with the same
configuration: first `trainer.checkpoint_dir`, then under `trainer.resume_dir` (where
Hydra puts run folders, `outputs/` by default). It continues from `last.pt`; from
`best.pt` where `last.pt` is damaged; from epoch 1 in the same MLflow run where both are
(or the run was killed before its first checkpoint: run_lock.py). `trainer.resume=PATH`
takes that checkpoint file (or that folder's) whatever its configuration. A folder whose
writer still runs is refused. A finished run leaves a `COMPLETE` marker next to its
checkpoints: auto skips it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from experiment.errors import CheckpointError, ConfigValueError
from experiment.runtime import distributed
from experiment.sweep.protocol import LostAttempt
from experiment.training.checkpoint import BEST, LAST, Checkpoint
from experiment.training.run_lock import LOCK, FolderInUse, live_owner, read_owner

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"


@dataclass
class ResumePoint:
    """Where a run continues: its checkpoint folder, the checkpoint it restores (None: its
    checkpoints are missing or damaged, it starts at epoch 1), and its MLflow run."""

    folder: Path
    checkpoint: Checkpoint | None
    run_id: str | None = None

    @property
    def next_epoch(self) -> int:
        return self.checkpoint.next_epoch if self.checkpoint else 0

    @property
    def mlflow_run_id(self) -> str | None:
        return (self.checkpoint.mlflow_run_id if self.checkpoint else None) or self.run_id


def _candidates(checkpoint_dir: Path, resume_dir: Path | None) -> list[Path]:
    """Unfinished run folders (a checkpoint or a run.lock in them), this run's own first,
    then the newest under `resume_dir`."""
    found = [checkpoint_dir] if _is_run_folder(checkpoint_dir) else []
    if resume_dir is not None and resume_dir.is_dir():
        folders = {p.parent for name in (LAST, BEST, LOCK) for p in resume_dir.rglob(name)}
        found += sorted(folders - set(found), key=_newest_change, reverse=True)
    return [f for f in found if not (f / COMPLETE_MARKER).exists()]


def _is_run_folder(folder: Path) -> bool:
    return any((folder / name).exists() for name in (LAST, BEST, LOCK))


def _newest_change(folder: Path) -> float:
    times = [(folder / n).stat().st_mtime for n in (LAST, BEST, LOCK) if (folder / n).exists()]
    return max(times, default=0.0)


def resume_from(folder: Path, wanted: str | None) -> ResumePoint | None:
    """How a run folder continues: from `last.pt`, else (damaged) from `best.pt`, else
    from epoch 1 in the same MLflow run (its run.lock names it); each fallback said in one
    line. None where the folder belongs to another configuration than `wanted` (None: any)
    or names no run at all. FolderInUse where its writer is still running."""
    owner = read_owner(folder)
    if wanted is not None and owner is not None and owner.fingerprint != wanted:
        return None
    problems = []
    for name in (LAST, BEST):
        path = folder / name
        if not path.exists():
            continue
        try:
            checkpoint = Checkpoint.load(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if wanted is not None and checkpoint.fingerprint != wanted:
            return None
        _refuse_live_writer(folder)
        if problems:
            log.warning("%s; continuing from %s instead.", problems[0], name)
        return ResumePoint(folder, checkpoint, owner.mlflow_run_id if owner else None)
    if owner is None or (wanted is not None and owner.fingerprint != wanted):
        for problem in problems:  # damaged checkpoints of a run this folder cannot name
            log.warning("Skipping it: %s", problem)
        return None
    if owner.mlflow_run_id is None and not problems:  # it stopped before its run started
        return None
    _refuse_live_writer(folder)
    why = "; ".join(problems) if problems else f"no checkpoint in {folder}"
    where = f"its MLflow run {owner.mlflow_run_id}" if owner.mlflow_run_id else "a new MLflow run"
    log.warning("%s: restarting the run at epoch 1 in %s.", why, where)
    return ResumePoint(folder, None, owner.mlflow_run_id)


def _refuse_live_writer(folder: Path) -> None:
    owner = live_owner(folder)
    if owner is not None:
        raise FolderInUse(folder, owner)


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
    point = ResumePoint(path.parent, checkpoint)
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
        log.info("Resuming from %s at epoch %s", point.folder, point.next_epoch + 1)
    return point


def find(option: str | None, wanted: str, checkpoint_dir: Path, resume_dir: Path | None):
    """The checkpoint to continue from, or None to start a new run; `auto` takes the
    newest unfinished one whose config fingerprint is `wanted`."""
    if option in (None, "", "never"):
        return None
    if option != "auto":
        path = Path(option).expanduser()
        folder = path if path.is_dir() else path.parent
        if not path.is_file() and not (path.is_dir() and _is_run_folder(path)):
            raise ConfigValueError(
                "trainer.resume", option, "'auto', null, or an existing checkpoint file/folder"
            )
        _refuse_live_writer(folder)
        if path.is_file():  # the file asked for, whatever its configuration
            return ResumePoint(folder, Checkpoint.load(path), _run_id_of(folder))
        return resume_from(folder, None)
    for folder in _candidates(checkpoint_dir, resume_dir):
        point = resume_from(folder, wanted)
        if point is not None:
            return point
    log.info("trainer.resume=auto: no unfinished run with this configuration; starting anew.")
    return None


def _run_id_of(folder: Path) -> str | None:
    owner = read_owner(folder)
    return owner.mlflow_run_id if owner else None


def mark_complete(checkpoint_dir: Path) -> None:
    (checkpoint_dir / COMPLETE_MARKER).touch()
