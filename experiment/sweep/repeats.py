"""A configuration trained several times: `hydra.sweeper.repeats=R` (seeds) and
`hydra.sweeper.folds=K` (cross-validation folds), judged by the mean.

A trial's units (R x K runs: each seed's folds in turn) are one unit of work: they run
one after another where the trial runs (this process, a worker, a torchrun group, a job),
so a trial holds one slot of n_jobs, its units never compete with each other for it and
they reuse its warm process (spread over slots, K units would hold K workers' data and
imports for one configuration, and a pruning decision after two units would have to wait
for the slowest). Unit (r, k) gets `seed_key` (default `trainer.seed`) = the configured
seed + r, `fold_key` (default `dataset.fold`) = k with its sibling `folds` = K, and a Hydra
job folder of its own (`<trial>/seed<r>`, `<trial>/fold<k>`, `<trial>/seed<r>-fold<k>`).
After each unit its objective value is reported to the trial as the next step: the pruner
compares a configuration's units with the other trials' same units (`MeanOfSeedsPruner` by
default; Optuna's `WilcoxonPruner` takes the same reports), so a configuration clearly
worse after two folds does not get a third. The trial's value is the mean; its standard
deviation and the units' values are user attributes. A lost trial's retry keeps the
values of the units it finished and trains the others.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
import warnings
from dataclasses import dataclass

import optuna
from omegaconf import OmegaConf, open_dict
from optuna.trial import TrialState

from experiment.errors import SweepError
from experiment.sweep import context as sweep_context
from experiment.sweep.protocol import FOLD_VALUES_ATTR, SEED_VALUES_ATTR

log = logging.getLogger("experiment")

STD_ATTR = "value_std"  # the standard deviation over a trial's units


@dataclass(frozen=True)
class Units:
    """The runs one trial makes: `repeats` seeds x `folds` folds."""

    repeats: int = 1
    folds: int = 1
    seed_key: str = "trainer.seed"
    fold_key: str = "dataset.fold"

    def __len__(self) -> int:
        return self.repeats * self.folds

    @property
    def several(self) -> bool:
        return len(self) > 1

    @property
    def values_attr(self) -> str:
        return FOLD_VALUES_ATTR if self.folds > 1 else SEED_VALUES_ATTR

    def fold_sibling(self, name: str) -> str:
        """The key `name` next to fold_key (`dataset.folds` beside `dataset.fold`)."""
        return f"{self.fold_key.rpartition('.')[0]}.{name}".lstrip(".")

    def indices(self) -> list[tuple[int | None, int | None]]:
        """(seed index, fold index) of each unit, in order; None where not varied."""
        seeds = range(self.repeats) if self.repeats > 1 else [None]
        folds = range(self.folds) if self.folds > 1 else [None]
        return [(seed, fold) for seed in seeds for fold in folds]

    def describe(self, seed: int | None, fold: int | None) -> str:
        """A unit, as its lines and messages name it."""
        parts = [f"seed {seed + 1} of {self.repeats}"] if seed is not None else []
        parts += [f"fold {fold + 1} of {self.folds}"] if fold is not None else []
        return ", ".join(parts)

    def label(self) -> str:
        """The trial run's name part: `3seeds`, `5folds`, `5folds-3seeds`."""
        parts = [f"{self.folds}folds"] if self.folds > 1 else []
        parts += [f"{self.repeats}seeds"] if self.repeats > 1 else []
        return "-".join(parts)

    def check(self, config) -> None:
        """SweepError where the keys the units set are not in the task's config."""
        if self.repeats > 1:
            base_seed(config, self.seed_key)
        if self.folds > 1:
            parent = self.fold_key.rpartition(".")[0]
            if parent and OmegaConf.select(config, parent, default=None) is None:
                raise SweepError(
                    f"hydra.sweeper.folds: {parent} is not in this config, so "
                    f"{self.fold_key} cannot be set; set hydra.sweeper.fold_key to the key "
                    "that selects a run's fold"
                )
            train_on_val = self.fold_sibling("train_on_val")
            if OmegaConf.select(config, train_on_val, default=False) is True:
                raise SweepError(
                    f"hydra.sweeper.folds={self.folds} with {train_on_val}=true: a "
                    "fold's validation part must be held out; set it to false"
                )


def base_seed(config, seed_key: str) -> int:
    """The seed the first repeat gets; SweepError where `seed_key` holds no integer."""
    base = OmegaConf.select(config, seed_key, default=None)
    if isinstance(base, bool) or not isinstance(base, int):
        raise SweepError(
            f"hydra.sweeper.repeats: {seed_key} is {base!r} in this config, not an integer "
            "seed; set hydra.sweeper.seed_key to the key that seeds a run"
        )
    return base


def unit_config(job_config, units: Units, seed: int | None, fold: int | None):
    """The job config of one unit: its seed moved by its index, its fold, its own folder."""
    config = copy.deepcopy(job_config)
    name = "-".join([f"seed{seed}"] * (seed is not None) + [f"fold{fold}"] * (fold is not None))
    with open_dict(config):
        if seed is not None:
            OmegaConf.update(config, units.seed_key, base_seed(config, units.seed_key) + seed)
        if fold is not None:
            OmegaConf.update(config, units.fold_key, fold, force_add=True)
            OmegaConf.update(config, units.fold_sibling("folds"), units.folds, force_add=True)
        config.hydra.sweep.subdir = f"{config.hydra.sweep.subdir}/{name}"
        config.hydra.job.id = f"{config.hydra.job.id}_{name}"
    return config


def run_units(run_one, job_config, context, units: Units):
    """Run the trial's units with `run_one(job_config)` -> (state, value, error); (state,
    mean value, error) for the trial. A unit that fails fails the trial; the units a lost
    attempt of this trial finished (their values kept on the retry) are not trained again."""
    trial = context.trial
    several = len(trial.study.directions) > 1
    # In a torchrun group every rank runs the units; rank 0 alone records them, and no unit
    # is pruned: the ranks would have to agree on it, or one would wait for the others.
    main_rank = int(os.environ.get("RANK", "0")) == 0
    in_group = int(os.environ.get("WORLD_SIZE", "1")) > 1
    context.continues = None  # a lost unit starts anew; the finished ones are kept
    finished = list(trial.user_attrs.get(units.values_attr) or [])
    values = []
    indices = units.indices()
    for index, (seed, fold) in enumerate(indices):
        context.repeat, context.fold = seed, fold
        done_before = index < len(finished)
        if done_before:
            value = finished[index]
        else:
            state, value, error = run_one(unit_config(job_config, units, seed, fold))
            if state != sweep_context.COMPLETE:
                return state, None, f"{units.describe(seed, fold)}: {error}"
        log.info(
            "Trial %s, %s: value %s%s",
            trial.number,
            units.describe(seed, fold),
            value,
            " (trained by the attempt this trial continues)" if done_before else "",
        )
        values.append(value)
        if not main_rank:
            continue
        trial.set_user_attr(units.values_attr, list(values))
        if several:  # Optuna prunes single-objective studies only
            continue
        with warnings.catch_warnings():  # a requeued or retried trial reports a unit again
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            trial.report(value, index)
        if index < len(indices) - 1 and not in_group and trial.should_prune():
            mean = statistics.fmean(values)
            return (
                sweep_context.PRUNED,
                None,
                f"pruned after {units.describe(seed, fold)} (mean {mean:.4f})",
            )
    mean, std = _mean_and_std(values, several)
    if main_rank:
        trial.set_user_attr(STD_ATTR, std)
    return sweep_context.COMPLETE, mean, None


def _mean_and_std(values: list, several: bool):
    if several:
        columns = list(zip(*values, strict=True))
        return [statistics.fmean(c) for c in columns], [_std(c) for c in columns]
    return statistics.fmean(values), _std(values)


def _std(values) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


class MeanOfSeedsPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose mean over its first k seeds (k >= `min_seeds`) is worse than
    the median of the other trials' means over their same first k seeds, once
    `n_startup_trials` trials have completed all their seeds."""

    def __init__(self, min_seeds: int = 2, n_startup_trials: int = 3):
        self.min_seeds, self.n_startup_trials = min_seeds, n_startup_trials

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        seeds = sorted(trial.intermediate_values)
        k = len(seeds)
        if k < self.min_seeds:
            return False
        others = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(others) < self.n_startup_trials:
            return False
        means = [
            statistics.fmean(t.intermediate_values[s] for s in seeds)
            for t in others
            if all(s in t.intermediate_values for s in seeds)
        ]
        if not means:
            return False
        mine = statistics.fmean(trial.intermediate_values[s] for s in seeds)
        median = statistics.median(means)
        if math.isnan(mine):
            return True
        if study.direction == optuna.study.StudyDirection.MAXIMIZE:
            return mine < median
        return mine > median
