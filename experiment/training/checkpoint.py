"""Checkpoints: model, optimizer, scheduler, loop state and config in one file.

`Checkpoint` is the one place that knows what a checkpoint holds: it captures a run's
state after an epoch, writes it, reads it back and restores a model, optimizer and
scheduler from it.

Written atomically (temp file + rename), so a run killed mid-save leaves the previous
checkpoint intact, and read with `weights_only=True`, so loading one runs no pickled code.
A file that is not such a checkpoint is refused with a `CheckpointError` that names it.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from experiment.errors import CheckpointError, ConfigValueError, WriteError
from experiment.system import durable
from experiment.training.engine import FitState

LAST, BEST = "last.pt", "best.pt"
# What every checkpoint of this project holds.
KEYS = ("model", "optimizer", "scheduler", "epoch", "best_value", "best_epoch", "history")


@dataclass
class Checkpoint:
    """A run's state after an epoch: weights, optimizer and scheduler state, the loop
    state, the resolved config, and the run's fingerprint and MLflow run id (what
    `trainer.resume=auto` matches and continues)."""

    model: dict = field(repr=False)
    optimizer: dict = field(repr=False)
    scheduler: dict | None = field(repr=False)
    loop: FitState
    config: dict = field(default_factory=dict, repr=False)
    fingerprint: str | None = None
    mlflow_run_id: str | None = None
    averaged: dict | None = field(default=None, repr=False)  # trainer.ema's AveragedModel

    @classmethod
    def capture(
        cls, state: FitState, model, optimizer, scheduler, averaged=None, **identity
    ) -> Checkpoint:
        """`identity`: config, fingerprint, mlflow_run_id; `averaged`: the weights'
        moving average (both sets are kept, so a resume is exact)."""
        return cls(
            averaged=averaged.state_dict() if averaged is not None else None,
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            loop=FitState(
                epoch=state.epoch,
                metrics=state.metrics,
                best_value=state.best_value,
                best_epoch=state.best_epoch,
                history=state.history,
            ),
            **identity,
        )

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        state = load_checkpoint(path)
        extra = state.get("extra") or {}
        return cls(
            model=state["model"],
            optimizer=state["optimizer"],
            scheduler=state["scheduler"],
            loop=FitState(
                epoch=int(state["epoch"]),
                metrics=dict(state.get("metrics") or {}),
                best_value=state["best_value"],
                best_epoch=int(state["best_epoch"]),
                history=list(state["history"]),
            ),
            config=state.get("config") or {},
            fingerprint=extra.get("fingerprint"),
            mlflow_run_id=extra.get("mlflow_run_id"),
            averaged=state.get("averaged"),
        )

    def save(self, *paths: Path) -> None:
        """Write the checkpoint to each of `paths`: serialized once, a file of its own each
        (never a second name of one file: damage to one is not damage to both)."""
        loop = self.loop
        data = serialize(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epoch=loop.epoch,
            metrics=loop.metrics,
            best_value=loop.best_value,
            best_epoch=loop.best_epoch,
            history=loop.history,
            config=self.config,
            extra={"fingerprint": self.fingerprint, "mlflow_run_id": self.mlflow_run_id},
            **({"averaged": self.averaged} if self.averaged is not None else {}),
        )
        for path in paths:
            write_checkpoint(path, data)

    def restore(self, model, optimizer, scheduler, averaged=None) -> FitState:
        """Load the weights and optimizer/scheduler state (and the weights' moving average
        into `averaged`); the loop state to go on from."""
        model.load_state_dict(self.model)
        optimizer.load_state_dict(self.optimizer)
        if scheduler is not None and self.scheduler is not None:
            scheduler.load_state_dict(self.scheduler)
        if averaged is not None and self.averaged is not None:
            averaged.load_state_dict(self.averaged)
        loop = self.loop
        return FitState(
            epoch=loop.epoch,
            metrics=dict(loop.metrics),
            best_value=loop.best_value,
            best_epoch=loop.best_epoch,
            history=list(loop.history),
        )

    @property
    def next_epoch(self) -> int:
        return self.loop.epoch + 1


def check_folder(folder: Path) -> None:
    """Before any epoch trains: the checkpoint folder can be created and written."""
    problem = durable.writable_folder_problem(folder)
    if problem is not None:
        raise ConfigValueError(
            "trainer.checkpoint_dir", str(folder), f"a folder this process can write ({problem})"
        )


def serialize(**state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_checkpoint(path: Path, data: bytes) -> None:
    """Write durably (experiment.system.durable); a write that fails leaves the previous file."""
    try:
        durable.write_bytes(path, data)
    except OSError as err:
        raise _write_error(path, err) from None


def _write_error(path: Path, err: OSError) -> WriteError:
    """A checkpoint that cannot be written: why, and what to do."""
    why = "the disk is full" if durable.is_disk_full(err) else err.strerror or str(err)
    return WriteError(
        f"Cannot write the checkpoint {path.name} in {path.parent}: {why}. The checkpoints "
        "already there are whole. Free space there (or give trainer.checkpoint_dir a "
        "folder with room), then run the same command with trainer.resume=auto to "
        "continue from the last one, in the same MLflow run."
    )


def evaluated_weights(state: dict) -> dict:
    """The weights a checkpoint's run evaluated: its moving average where it kept one that
    has averaged a step (trainer.ema), else the model's."""
    averaged = state.get("averaged")
    if averaged is None or int(averaged.get("n_averaged", 0)) == 0:
        return state["model"]
    return {k.removeprefix("module."): v for k, v in averaged.items() if k.startswith("module.")}


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        raise CheckpointError(path, f"it cannot be read ({err.strerror or err})") from None
    except pickle.UnpicklingError as err:
        # PyTorch's own message suggests weights_only=False, i.e. running the file's code:
        # say what the file is instead.
        raise CheckpointError(path, _why_unpickling_failed(err)) from None
    except Exception as err:  # arbitrary bytes fail the unpickler in arbitrary ways
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            path, f"it is empty, truncated or not a PyTorch checkpoint file ({detail})"
        ) from None
    missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else list(KEYS)
    if missing:
        raise CheckpointError(
            path, f"it is a PyTorch file but not a checkpoint of a run: it lacks {missing}"
        )
    return state


def _why_unpickling_failed(err: pickle.UnpicklingError) -> str:
    text = str(err)
    if "Unsupported global" in text:  # a class or function to import and call
        return (
            "it holds pickled Python objects, which loading would run as code; it is "
            "refused (checkpoints of a run hold only tensors and plain values)"
        )
    return "it is not a PyTorch checkpoint file"
