"""What a run records about itself, and how it ends: its MLflow run's name, params, tags
and config files, a store that fails mid-run, and the final status.

A run is always closed with a final status (FINISHED, FAILED, KILLED): none is left
RUNNING by an exception or Ctrl-C. MLflow itself is behind `experiment.tracking.tracker`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from pathlib import Path

import torch

import experiment
from experiment.config.fine_tuning import fine_tuned
from experiment.errors import ExperimentError, TrackingError
from experiment.system.durable import is_disk_full
from experiment.system.secrets import redact

log = logging.getLogger(__name__)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@contextlib.contextmanager
def store_failure_keeps(checkpoint_dir: Path, when: str):
    """A tracking store that fails mid-run: stop with a message that says where the
    trained weights are and how to continue, instead of a traceback."""
    try:
        yield
    except ExperimentError:
        raise
    except Exception as err:  # Ctrl-C (KeyboardInterrupt) is no Exception: it passes
        if is_disk_full(err):  # an artifact (a plot, the model) found no room
            cause = f"no space left on the disk of {err.filename or 'its artifact folder'}"
            back = "there is room again"
        else:
            detail = redact(str(err)).splitlines()[0] if str(err) else ""
            cause, back = f"{type(err).__name__}: {detail}", "the store is back"
        raise TrackingError(
            f"The MLflow tracking store failed {when}: {cause}. Nothing trained is "
            f"lost: the checkpoints (last.pt, best.pt) are in {checkpoint_dir}. Once "
            f"{back}, run the same command with trainer.resume=auto to continue."
        ) from None


@contextlib.contextmanager
def final_status(tracker, outcome):
    """Whatever happens inside, the run ends with the status (and tags) that
    `outcome(error)` gives for how it ended: none is left RUNNING."""
    error = None
    try:
        yield
    except BaseException as err:
        error = err
        raise
    finally:
        status, tags = outcome(error)
        try:
            tracker.set_tags(tags)
            tracker.finish(status)
            if isinstance(error, KeyboardInterrupt) and tracker.run_id:  # said as it stops
                error.add_note(f"MLflow run {tracker.run_id} marked {status}")
        except Exception as err:  # the store is down: the error that brought us here counts
            log.warning("Could not record the run's end in MLflow: %s", type(err).__name__)


def run_tags(device: torch.device) -> dict[str, str]:
    return {
        "device": str(device),
        "git_commit": git_commit() or "none",
        "torch": torch.__version__,
        "experiment": experiment.__version__,
        "process": f"{socket.gethostname()}:{os.getpid()}",
    }


def run_record(
    run, device, trial, point, extra_tags: dict, overrides_text: str, continued_run_id=None
) -> dict:
    """What the MLflow run starts with (`Tracker.start`'s arguments): name, params, tags,
    config files, its parent (in a sweep) and the run it continues (`continued_run_id`:
    a resumed run's, or a lost trial's that its retry continues)."""
    return dict(
        run_name=run.run_name or trial.run_name(default_run_name(run)),
        params=run.params(),
        tags={**run_tags(device), **trial.tags, **extra_tags},
        texts={"config.yaml": run.yaml(), "overrides.yaml": overrides_text},
        parent_run_id=trial.parent_run_id,
        resume_run_id=continued_run_id,
        history=point.checkpoint.loop.history if point and point.checkpoint else [],
    )


def default_run_name(run) -> str:
    """model-optimizer-lr: enough to tell runs apart in the MLflow UI's run list (a timm
    model by its architecture, any other by its class)."""
    model, optimizer = run.resolved["model"], run.resolved["optimizer"]
    name = run.model.name if fine_tuned(run.model) else model["_target_"].rsplit(".", 1)[-1].lower()
    return f"{name}-{optimizer['_target_'].rsplit('.', 1)[-1].lower()}-lr{optimizer['lr']:.3g}"


def epoch_logger(tracker, checkpoint_dir: Path):
    """The epoch callback that logs each epoch's metrics."""

    def log_epoch(state) -> None:
        with store_failure_keeps(checkpoint_dir, f"in epoch {state.epoch + 1}"):
            tracker.log_epoch(state.epoch, state.metrics)

    return log_epoch
