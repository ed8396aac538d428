"""What a sweep adds to a run, in one place.

The sweeper sets a `TrialContext` around each job; `run()` asks the current context (a
`Standalone` one outside sweeps) for the run's name, its MLflow parent and tags, the epoch
callbacks (reporting to the trial, so the pruner can stop it) and, at the end, the
MLflow status and tags that say how the run ended.
"""

from __future__ import annotations

import contextlib
import warnings
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from experiment.sweep.protocol import CHECKPOINT_DIR_ATTR, RUN_ID_ATTR, LostAttempt

PRUNED, COMPLETE, FAIL = "PRUNED", "COMPLETE", "FAIL"
# A trial its environment failed (experiment.errors.EnvironmentFailure): not counted, kept
# for a retry, and the sweep stops.
LOST = "LOST"
MEASURES_ATTR = "measures"  # the trial's user attribute holding what its run measured


class Standalone:
    """A run on its own: no trial to report to, resumable from its checkpoints."""

    parent_run_id: str | None = None
    quiet = False
    resumable = True
    tags: dict[str, str] = {}
    wanted_measures: tuple[str, ...] = ()  # measures a run computes only when asked
    # The lost attempt a sweep's retry continues.
    continues: LostAttempt | None = None

    def record_measures(self, measures: dict[str, float]) -> None:
        pass

    def run_name(self, base: str) -> str:
        return base

    def callbacks(self, metric: str) -> list:
        return []

    def record_run(self, run_id: str | None, checkpoint_dir: str) -> None:
        pass

    def restore_reports(self, history: list[dict[str, float]], metric: str) -> None:
        """Report a resumed run's checkpointed epochs again (to a retried trial)."""

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
    resumable = False  # a lost trial is continued by its retry (`continues`), not by resume
    extra_tags: dict[str, str] = field(default_factory=dict)  # e.g. the trial's job id
    # What the sweep's constraints name: a run computes these even if it would not.
    wanted_measures: tuple[str, ...] = ()
    # The retry of a lost trial continues it: its MLflow run, from its last checkpoint.
    continues: LostAttempt | None = None
    # hydra.sweeper.repeats and folds: the trial's seeds and folds (repeats.Units), each
    # a run of its own (nested under the trial's run), reported to the trial by the
    # sweeper after each, not per epoch.
    units: Any = None
    repeat: int | None = None  # the seed's index while one runs
    fold: int | None = None  # the fold's index while one runs
    _measures: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def tags(self) -> dict[str, str]:
        retry = {"optuna.retry_of": str(self.continues.trial)} if self.continues else {}
        seed = {"optuna.repeat": str(self.repeat)} if self.repeat is not None else {}
        if self.fold is not None:
            seed["optuna.fold"] = str(self.fold)
        return {
            "optuna.study_name": self.study_name,
            "optuna.trial": str(self.trial.number),
            **retry,
            **seed,
            **self.extra_tags,
        }

    @property
    def reports_epochs(self) -> bool:
        """Whether a run reports its epochs to the trial: not one unit of several (a seed,
        a fold: the trial's reports are then its units' values)."""
        return self.units is None or not self.units.several

    def run_name(self, base: str) -> str:
        name = f"{base}-trial{self.trial.number}"  # no two trials share a name
        name = name if self.repeat is None else f"{name}-seed{self.repeat}"
        return name if self.fold is None else f"{name}-fold{self.fold}"

    def callbacks(self, metric: str) -> list:
        """An epoch callback that reports `metric` and stops the run if the pruner says so."""
        if not self.reports_epochs:
            return []

        def report_epoch(state) -> None:
            report(state.metrics[metric], state.epoch, metric)

        return [report_epoch]

    def record_run(self, run_id: str | None, checkpoint_dir: str) -> None:
        """Keep the run's id and checkpoint folder on the trial: what a retry continues
        (one seed of several is not the trial's run: that one the sweeper made)."""
        if not self.reports_epochs:
            return
        if run_id is not None:
            self.trial.set_user_attr(RUN_ID_ATTR, run_id)
        self.trial.set_user_attr(CHECKPOINT_DIR_ATTR, checkpoint_dir)

    def restore_reports(self, history: list[dict[str, float]], metric: str) -> None:
        """The epochs a retried trial continues from, reported to it as the lost trial
        reported them: the pruner sees the whole curve."""
        if len(self.trial.study.directions) > 1 or not self.reports_epochs:
            return
        with warnings.catch_warnings():  # a requeued job's trial holds them already
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            for epoch, metrics in enumerate(history):
                if metric in metrics:
                    self.trial.report(metrics[metric], epoch)

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
    if not isinstance(context, TrialContext):  # outside a sweep (or retraining a trial)
        return
    if len(context.trial.study.directions) > 1 or not context.reports_epochs:
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
_current: ContextVar[Standalone | None] = ContextVar("trial_context", default=None)


def current() -> Standalone | None:
    return _current.get()


@contextlib.contextmanager
def active(context: Standalone):
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
