"""`hydra.sweeper.constraints`: bounds on what a trial measured ("model/params <= 50000").

Each trial's run records its measures on the trial (`sweep_context.record_measures`); when
the trial ends, the sweeper sets one Optuna constraint value per bound on it (<= 0 means
satisfied: Optuna 5's `Trial.set_constraint`, which replaces the deprecated
`constraints_func`). The samplers that use constraints (TPE, NSGA-II, NSGA-III, GP: those
that take `constraints_func`) steer away from infeasible regions, and Optuna's best trial
and Pareto front hold feasible trials only.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from experiment.errors import SweepError
from experiment.sweep import optuna_internals as internals
from experiment.sweep.context import MEASURES_ATTR

# Where Optuna's Trial.set_constraint keeps a constraint value (a system attribute), read
# back by FrozenTrial.constraints, the samplers and Study.best_trial(s).
FEASIBLE_ATTR = "feasible"  # the trial's user attribute: True or False, once it finished
_FORM = re.compile(r"^\s*(?P<measure>[^<>=\s]+)\s*(?P<op><=|>=)\s*(?P<bound>\S+)\s*$")
# What a missing measure of a pruned trial counts as: violated, by a unit.
_MISSING = 1.0


@dataclass(frozen=True)
class Constraint:
    measure: str
    op: str  # "<=" or ">="
    bound: float

    def violation(self, value: float) -> float:
        """Optuna's constraint value: <= 0 when satisfied, else how far off."""
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:
        return f"{self.measure} {self.op} {self.bound:g}"


def parse(specs: list[str] | None) -> list[Constraint]:
    """The constraints of `hydra.sweeper.constraints`; SweepError names a malformed one."""
    if specs is None:
        return []
    if isinstance(specs, str):
        specs = [specs]
    constraints = []
    for spec in specs:
        match = _FORM.match(str(spec))
        bound = _number(match.group("bound")) if match else None
        if bound is None:
            raise SweepError(
                f"hydra.sweeper.constraints: {spec!r} is not a constraint. Write "
                "'MEASURE <= NUMBER' or 'MEASURE >= NUMBER', e.g. 'model/params <= 50000'."
            )
        measure = match.group("measure")
        if measure.startswith("test/"):
            raise SweepError(
                f"hydra.sweeper.constraints: {spec!r} bounds a test metric; the test split is "
                "never used for selection. Bound a validation metric (val/...) or a measure."
            )
        constraints.append(Constraint(measure, match.group("op"), bound))
    return constraints


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class Judge:
    """Optuna constraint values for a trial, from its recorded measures (a pruned trial
    that never measured one counts as violating it)."""

    def __init__(self, constraints: list[Constraint]):
        self.constraints = constraints

    def values(self, trial: FrozenTrial) -> dict[str, float]:
        measures = trial.user_attrs.get(MEASURES_ATTR) or {}
        return {
            str(c): c.violation(measures[c.measure]) if c.measure in measures else _MISSING
            for c in self.constraints
        }

    def set_on(self, study, trial: FrozenTrial) -> bool:
        """Store the trial's constraint values (before it is told: a finished trial cannot
        be changed) and its feasibility; whether it is feasible."""
        values = self.values(trial)
        for key, value in values.items():
            internals.set_system_attr(study, trial, internals.CONSTRAINT_ATTR.format(key), value)
        feasible = all(v <= 0 for v in values.values())
        internals.set_user_attr(study, trial, FEASIBLE_ATTR, feasible)
        return feasible

    def missing(self, trial: FrozenTrial) -> list[str]:
        """The constrained measures a trial did not record."""
        measures = trial.user_attrs.get(MEASURES_ATTR) or {}
        return [c.measure for c in self.constraints if c.measure not in measures]


def check_sampler(factory, name: str) -> None:
    """Refuse constraints for a sampler that cannot use them (Optuna would ignore them)."""
    if "constraints_func" not in inspect.signature(factory).parameters:
        raise SweepError(
            f"hydra.sweeper.constraints: the sampler {name} does not take constraints. Use "
            "one that does: tpe, nsgaii, nsgaiii or gp (hydra/sweeper/sampler=tpe)."
        )


def violates(trial: FrozenTrial) -> bool:
    """Whether a constraint value of the trial is above 0 (not satisfied)."""
    return any(v > 0 for v in trial.constraints.values())


def is_feasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and not violates(trial)


def missing_measures_message(trial_number: int, missing: list[str], measures: dict) -> str:
    recorded = ", ".join(sorted(measures)) or "none"
    return (
        f"hydra.sweeper.constraints name {', '.join(missing)}, which trial {trial_number} did "
        f"not record (it recorded: {recorded}). The project's runs record model/params, "
        "model/latency_ms, peak_rss_mb, train_time_s and the best epoch's metrics; a task "
        "function of your own records its measures with "
        "experiment.sweep.context.record_measures({...})."
    )


class FeasibleTrialsPruner(optuna.pruners.BasePruner):
    """Prunes as `base` does, but compared with feasible trials only.

    Without it, a large infeasible model's good learning curve would set the bar for the
    feasible ones: a median pruner would stop most feasible trials early and the sweep
    would end with few of them trained. (Hyperband keeps its own brackets of the whole
    study and is not filtered.)
    """

    def __init__(self, base: optuna.pruners.BasePruner):
        self.base = base

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.base.prune(_FeasibleView(study), trial)


class _FeasibleView:
    """A study whose finished infeasible trials are hidden from what reads its trials."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        return [t for t in trials if not _is_infeasible(t)]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def _is_infeasible(trial: FrozenTrial) -> bool:
    return trial.state.is_finished() and violates(trial)
