"""Epoch callbacks that belong to every run: checkpoints and early stopping (and, with
trainer.overfit_batches, the overfitting check).

Each is called with the loop's `FitState` after an epoch. The run puts them in order:
checkpoints first (a pruned or stopped run has its last epoch saved), early stopping last.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from experiment.training.checkpoint import BEST, LAST, Checkpoint
from experiment.training.engine import FitState

log = logging.getLogger("experiment")


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


class OverfitCheck:
    """trainer.overfit_batches: stops once the training loss is at most `target` (the
    model learned the batches by heart) and says so; says what to look at where the last
    epoch ends above it."""

    def __init__(self, batches: int, target: float, epochs: int):
        self.batches, self.target, self.epochs = batches, target, epochs

    def __call__(self, state: FitState) -> None:
        loss = state.metrics["train/loss"]
        if loss <= self.target:
            state.stop_reason = f"train/loss {loss:.4g} <= trainer.overfit_loss"
            log.info(
                "Overfit %s batches: train/loss %.4g after %s epochs: the model, loss and "
                "data can learn.",
                self.batches,
                loss,
                state.epochs_run,
            )
        elif state.epochs_run == self.epochs:
            log.warning(
                "Overfit %s batches: train/loss still %.4g after %s epochs (target %g): look "
                "at the loss, the targets, the learning rate and the model's output layer, "
                "or give it more trainer.epochs.",
                self.batches,
                loss,
                self.epochs,
                self.target,
            )
