"""Epoch callbacks that belong to every run: checkpoints and early stopping.

Each is called with the loop's `FitState` after an epoch. The run puts them in order:
checkpoints first (a pruned or stopped run has its last epoch saved), early stopping last.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from experiment.training.checkpoint import BEST, LAST, Checkpoint
from experiment.training.engine import FitState


class Checkpointer:
    """Keeps `last.pt` (every epoch) and `best.pt` (the best epoch so far) in `directory`,
    each a `Checkpoint` of the run; `identity`: its config, fingerprint and MLflow run id."""

    def __init__(
        self, directory: Path, model: nn.Module, optimizer, scheduler, averaged=None, **identity
    ):
        self.directory, self.model, self.averaged = Path(directory), model, averaged
        self.optimizer, self.scheduler, self.identity = optimizer, scheduler, identity

    def __call__(self, state: FitState) -> None:
        checkpoint = Checkpoint.capture(
            state, self.model, self.optimizer, self.scheduler, self.averaged, **self.identity
        )
        if state.improved:  # best first: a resume finds best.pt whole
            checkpoint.save(self.directory / BEST, self.directory / LAST)
        else:
            checkpoint.save(self.directory / LAST)


class EarlyStopping:
    """Stops training once `patience` epochs passed without a new best epoch."""

    def __init__(self, patience: int | None):
        self.patience = patience

    def __call__(self, state: FitState) -> None:
        if self.patience is not None and state.epoch - state.best_epoch >= self.patience:
            state.stop_reason = f"no improvement for {self.patience} epochs"
