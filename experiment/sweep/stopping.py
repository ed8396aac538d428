"""When a sweep stops before its budget: `timeout`, `target` and `patience`.

A sweep ended by one of them succeeded: no new trial starts, the running ones finish, and
the summary line and the results file say which condition ended it. `target` and
`patience` are read from the study (every process sharing it stops; a rerun with the same
settings stops at once, one with a higher bar goes on); `timeout` counts from this
invocation's first trial (the set-up before it, however slow, does not count), so a rerun
resumes with its own clock.
"""

from __future__ import annotations

import datetime
import math
import numbers
import time
from dataclasses import dataclass, field

import optuna
from optuna.study import StudyDirection

from experiment.errors import SweepError
from experiment.sweep.constraints import is_feasible
from experiment.sweep.study import FINISHED, is_counted


@dataclass(frozen=True)
class Stop:
    by: str  # n_trials | timeout | target | patience | max_failure_rate | interrupted | environment
    reason: str


@dataclass
class StopConditions:
    timeout: float | None = None
    target: list[float] | None = None  # one per objective
    patience: int | None = None
    started: float = field(default_factory=time.monotonic)

    def start_clock(self) -> None:
        """`timeout` counts from here: the trial loop's start."""
        self.started = time.monotonic()

    @classmethod
    def from_settings(cls, timeout, target, patience, n_objectives: int) -> StopConditions:
        """Checked settings; SweepError names the one that cannot be used."""
        if timeout is not None and not (_is_number(timeout) and timeout > 0):
            raise SweepError(
                f"hydra.sweeper.timeout={timeout}: needs a number of seconds > 0 (or null)"
            )
        if patience is not None and not (
            isinstance(patience, int) and not isinstance(patience, bool) and patience >= 1
        ):
            raise SweepError(
                f"hydra.sweeper.patience={patience}: needs an integer >= 1 (finished trials "
                "without a new best), or null"
            )
        targets = None
        if target is not None:
            targets = [target] if _is_number(target) else list(target)
            if len(targets) != n_objectives or not all(_is_number(t) for t in targets):
                expected = "a number" if n_objectives == 1 else f"{n_objectives} numbers"
                raise SweepError(
                    f"hydra.sweeper.target={target}: needs {expected}, one per objective"
                )
        return cls(timeout, targets, patience)

    def check(self, study: optuna.Study) -> Stop | None:
        """The condition that ends the sweep now, if one does."""
        if self.timeout is not None and time.monotonic() - self.started >= self.timeout:
            return Stop("timeout", f"{self.timeout:g} s passed (hydra.sweeper.timeout)")
        trials = _finished_in_order(study) if self.target or self.patience else []
        if self.target is not None:
            reached = _first_reaching(trials, self.target, study.directions)
            if reached is not None:
                return Stop(
                    "target",
                    f"trial {reached.number} reached {_show(reached.values)}, the target "
                    f"{_show(self.target)} (hydra.sweeper.target)",
                )
        if self.patience is not None:
            since = _trials_since_best(trials, study.directions)
            if since >= self.patience:
                return Stop(
                    "patience",
                    f"{since} finished trials without a new best (hydra.sweeper.patience)",
                )
        return None


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _show(values) -> str:
    return ", ".join(f"{v:.6g}" for v in values) if len(values) > 1 else f"{values[0]:.6g}"


def _finished_in_order(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's own finished trials (not copies, not killed ones) in the order they
    ended."""
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED) if is_counted(t)]
    latest = datetime.datetime.max
    return sorted(trials, key=lambda t: (t.datetime_complete or latest, t.number))


def _signs(directions) -> list[float]:
    """+1 where lower is better, -1 where higher is: values times signs are minimized."""
    return [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions]


def _first_reaching(trials, target: list[float], directions):
    signs = _signs(directions)
    for trial in trials:
        if is_feasible(trial) and all(
            s * v <= s * t for s, v, t in zip(signs, trial.values, target, strict=True)
        ):
            return trial
    return None


def _trials_since_best(trials, directions) -> int:
    """How many finished trials came since the last one that improved the best (several
    objectives: that joined the Pareto front of the trials before it)."""
    signs = _signs(directions)
    front: list[list[float]] = []
    since = 0
    for trial in trials:
        values = [s * v for s, v in zip(signs, trial.values or [], strict=False)]
        if is_feasible(trial) and not any(_dominates_or_equals(f, values) for f in front):
            front = [f for f in front if not _dominates_or_equals(values, f)] + [values]
            since = 0
        else:
            since += 1
    return since


def _dominates_or_equals(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True))
