"""Epoch callbacks that belong to every run: checkpoints and early stopping.

Each is called with the loop's `FitState` after an epoch. The run puts them in order:
checkpoints first (a pruned or stopped run has its last epoch saved), early stopping last.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from experiment.checkpoint import BEST, LAST, save_checkpoint
from experiment.engine import FitState


class Checkpointer:
    """Keeps `last.pt` (every epoch) and `best.pt` (the best epoch so far) in `directory`,
    each with what a resume needs: weights, optimizer and scheduler state, the loop state,
    the resolved config and `extra` (the run's fingerprint and MLflow run id)."""

    def __init__(
        self,
        directory: Path,
        model: nn.Module,
        optimizer,
        scheduler,
        config: dict,
        extra: dict,
    ):
        self.directory, self.model = Path(directory), model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.config, self.extra = config, extra

    def __call__(self, state: FitState) -> None:
        checkpoint = dict(
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
            epoch=state.epoch,
            metrics=state.metrics,
            best_value=state.best_value,
            best_epoch=state.best_epoch,
            history=state.history,
            config=self.config,
            extra=self.extra,
        )
        if state.improved:
            save_checkpoint(self.directory / BEST, **checkpoint)
        save_checkpoint(self.directory / LAST, **checkpoint)  # last: a resume finds best.pt whole


class EarlyStopping:
    """Stops training once `patience` epochs passed without a new best epoch."""

    def __init__(self, patience: int | None):
        self.patience = patience

    def __call__(self, state: FitState) -> None:
        if self.patience is not None and state.epoch - state.best_epoch >= self.patience:
            state.stop_reason = f"no improvement for {self.patience} epochs"
