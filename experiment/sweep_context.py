"""What a sweep adds to a run, in one place.

The sweeper sets a `TrialContext` around each job; `run()` asks the current context (a
`Standalone` one outside sweeps) for the run's name, its MLflow parent and tags, the epoch
callbacks (reporting to the trial, so the pruner can stop it) and, at the end, the
MLflow status and tags that say how the run ended.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

PRUNED, COMPLETE, FAIL = "PRUNED", "COMPLETE", "FAIL"
MEASURES_ATTR = "measures"  # the trial's user attribute holding what its run measured


class Standalone:
    """A run on its own: no trial to report to, resumable from its checkpoints."""

    parent_run_id: str | None = None
    quiet = False
    resumable = True
    tags: dict[str, str] = {}
    wanted_measures: tuple[str, ...] = ()  # measures a run computes only when asked

    def record_measures(self, measures: dict[str, float]) -> None:
        pass

    def run_name(self, base: str) -> str:
        return base

    def callbacks(self, metric: str) -> list:
        return []

    def record_run(self, run_id: str | None) -> None:
        pass

    def outcome(self, error: BaseException | None) -> tuple[str, dict[str, str]]:
        """The MLflow status (and tags) for a run that ended with `error` (None: success)."""
        if error is None:
            return "FINISHED", {}
        return ("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"), {}


@dataclass
class TrialContext(Standalone):
    trial: Any  # optuna.Trial
    study_name: str
    parent_run_id: str | None = None
    quiet: bool = False  # parallel workers keep the console for the sweep's own lines
    resumable = False  # the sweeper retries a killed trial's configuration itself
    extra_tags: dict[str, str] = field(default_factory=dict)  # e.g. the trial's job id
    # What the sweep's constraints name: a run computes these even if it would not.
    wanted_measures: tuple[str, ...] = ()
    _measures: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def tags(self) -> dict[str, str]:
        return {
            "optuna.study_name": self.study_name,
            "optuna.trial": str(self.trial.number),
            **self.extra_tags,
        }

    def run_name(self, base: str) -> str:
        return f"{base}-trial{self.trial.number}"  # no two trials share a name

    def callbacks(self, metric: str) -> list:
        """An epoch callback that reports `metric` and stops the run if the pruner says so."""

        def report_epoch(state) -> None:
            report(state.metrics[metric], state.epoch, metric)

        return [report_epoch]

    def record_run(self, run_id: str | None) -> None:
        if run_id is not None:
            self.trial.set_user_attr("mlflow_run_id", run_id)

    def record_measures(self, measures: dict[str, float]) -> None:
        """Keep `measures` (name -> number) on the trial, for the sweep's constraints; a
        later call adds to and replaces the earlier ones."""
        self._measures.update({name: float(value) for name, value in measures.items()})
        self.trial.set_user_attr(MEASURES_ATTR, dict(self._measures))

    def outcome(self, error: BaseException | None) -> tuple[str, dict[str, str]]:
        if error is None:
            return "FINISHED", {"optuna.state": COMPLETE}
        if isinstance(error, KeyboardInterrupt):  # the sweeper retries it: no trial state yet
            return "KILLED", {}
        if self.is_pruned(error):  # a pruned trial ended as intended
            return "FINISHED", {"optuna.state": PRUNED}
        return "FAILED", {"optuna.state": FAIL}

    @staticmethod
    def is_pruned(error: BaseException) -> bool:
        import optuna

        return isinstance(error, optuna.TrialPruned)


def report(value: float, step: int, name: str = "value") -> None:
    """Report an intermediate objective value (e.g. the validation metric of epoch `step`)
    to the current trial, and end the run with optuna.TrialPruned if the pruner says so.

    The project's own app calls it every epoch; a user's own task function calls it the
    same way to be pruned. Outside a sweep, and in multi-objective studies (which Optuna
    cannot prune), it does nothing.
    """
    context = current()
    if context is None or len(context.trial.study.directions) > 1:
        return
    import optuna

    context.trial.report(value, step)
    if context.trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step + 1} ({name}={value:.4f})")


def record_measures(measures: dict[str, float]) -> None:
    """Record what this run measured (e.g. {"model/params": 12345}) on the current trial,
    where the sweep's `constraints` read it. The project's own app records its measures
    itself; a user's task function calls this before it returns. Outside a sweep it does
    nothing."""
    context = current()
    if context is not None:
        context.record_measures(measures)


STANDALONE = Standalone()
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
