"""The trial a run belongs to, when a sweep runs it.

The sweeper sets the context around each job; `run()` reads it to report the objective
to the trial every epoch (so the pruner can stop it), to nest its MLflow run under the
study's parent run, and to tag the run with the study and trial.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

PRUNED, COMPLETE, FAIL = "PRUNED", "COMPLETE", "FAIL"


@dataclass
class TrialContext:
    trial: Any  # optuna.Trial
    study_name: str
    parent_run_id: str | None = None
    quiet: bool = False  # parallel workers keep the console for the sweep's own lines

    @property
    def tags(self) -> dict[str, str]:
        return {"optuna.study_name": self.study_name, "optuna.trial": str(self.trial.number)}

    def report(self, metric: str):
        """An epoch callback that reports `metric` and stops the run if the pruner says so."""
        import optuna

        def callback(epoch: int, metrics: dict[str, float]) -> None:
            self.trial.report(metrics[metric], epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at epoch {epoch + 1} ({metric}={metrics[metric]:.4f})"
                )

        return callback

    def record_run(self, run_id: str | None) -> None:
        if run_id is not None:
            self.trial.set_user_attr("mlflow_run_id", run_id)

    @staticmethod
    def is_pruned(error: BaseException) -> bool:
        import optuna

        return isinstance(error, optuna.TrialPruned)


_current: ContextVar[TrialContext | None] = ContextVar("trial_context", default=None)


def current() -> TrialContext | None:
    return _current.get()


@contextlib.contextmanager
def active(context: TrialContext):
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
