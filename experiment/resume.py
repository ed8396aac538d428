"""`trainer.resume`: continue a killed run from its last checkpoint, in the same MLflow run.

`trainer.resume=auto` looks for the newest unfinished `last.pt` of a run with the same
configuration: first in `trainer.checkpoint_dir`, then under `trainer.resume_dir` (where
Hydra puts run folders, `outputs/` by default). `trainer.resume=PATH` takes that
checkpoint file (or the `last.pt` in that folder) whatever its configuration.
A finished run leaves a `COMPLETE` marker next to its checkpoints: auto skips it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from experiment import distributed
from experiment.checkpoint import LAST, load_checkpoint
from experiment.engine import FitState
from experiment.errors import CheckpointError, ConfigValueError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
# Keys that may differ between a run and its resumption: where things go, how to resume.
_NOT_IDENTITY = ("checkpoint_dir", "resume", "resume_dir")


@dataclass
class ResumePoint:
    checkpoint: Path
    state: dict = field(repr=False)

    @property
    def next_epoch(self) -> int:
        return int(self.state["epoch"]) + 1

    @property
    def mlflow_run_id(self) -> str | None:
        return self.state.get("extra", {}).get("mlflow_run_id")


def fingerprint(resolved: dict) -> str:
    """What makes two runs the same run: the resolved config minus paths and resume keys."""
    identity = {k: v for k, v in resolved.items() if k not in ("hydra", "run_name")}
    identity["trainer"] = {
        k: v for k, v in identity.get("trainer", {}).items() if k not in _NOT_IDENTITY
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _candidates(checkpoint_dir: Path, resume_dir: Path | None) -> list[Path]:
    found = [checkpoint_dir / LAST] if (checkpoint_dir / LAST).exists() else []
    if resume_dir is not None and resume_dir.is_dir():
        others = sorted(resume_dir.rglob(LAST), key=lambda p: p.stat().st_mtime, reverse=True)
        found += [p for p in others if p not in found]
    return [p for p in found if not (p.parent / COMPLETE_MARKER).exists()]


def find_for(trainer, resolved: dict) -> ResumePoint | None:
    """The checkpoint `trainer.resume` asks for (a `trainer` config node), or None.
    A run that torchrun restarted after a rank died (--max-restarts) resumes by itself."""
    search = Path(trainer.resume_dir) if trainer.resume_dir else None
    option = trainer.resume
    if option is None and distributed.restarted():
        log.info("torchrun restarted the ranks: resuming (trainer.resume=auto)")
        option = "auto"
    point = find(option, resolved, Path(trainer.checkpoint_dir), search)
    if point is not None:
        log.info(f"Resuming from {point.checkpoint} at epoch {point.next_epoch + 1}")
    return point


def find(option: str | None, resolved: dict, checkpoint_dir: Path, resume_dir: Path | None):
    """The checkpoint to continue from, or None to start a new run."""
    if option in (None, "", "never"):
        return None
    if option != "auto":
        path = Path(option).expanduser()
        path = path / LAST if path.is_dir() else path
        if not path.is_file():
            raise ConfigValueError(
                "trainer.resume", option, "'auto', null, or an existing checkpoint file/folder"
            )
        return ResumePoint(path, load_checkpoint(path))
    wanted = fingerprint(resolved)
    for path in _candidates(checkpoint_dir, resume_dir):
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:  # a damaged file: say so, look further
            log.warning(f"Skipping it: {err}")
            continue
        if state.get("extra", {}).get("fingerprint") == wanted:
            return ResumePoint(path, state)
    log.info("trainer.resume=auto: no unfinished run with this configuration; starting anew.")
    return None


def restore(point: ResumePoint, model, optimizer, scheduler) -> FitState:
    """Load the checkpoint's weights and optimizer/scheduler state; the loop state to go on from."""
    state = point.state
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    return FitState(
        epoch=int(state["epoch"]),
        metrics=dict(state.get("metrics", {})),
        best_value=state["best_value"],
        best_epoch=int(state["best_epoch"]),
        history=list(state["history"]),
    )


def mark_complete(checkpoint_dir: Path) -> None:
    (checkpoint_dir / COMPLETE_MARKER).touch()
