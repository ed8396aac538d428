"""`hydra.sweeper.repeats=K`: each configuration trained with K seeds, judged by the mean.

A trial's repeats are one unit of work: they run one after another where the trial runs
(this process, a worker, a torchrun group, a job), so a trial holds one slot of n_jobs,
its seeds never compete with each other for it and they reuse its warm process (spread
over slots, K seeds would hold K workers' data and imports for one configuration, and a
pruning decision after two seeds would have to wait for the slowest). Repeat i gets
`seed_key` (default `trainer.seed`) = the configured seed + i and a Hydra job folder of
its own (`<trial>/seed<i>`). After each seed its objective value is reported to the trial as
step i: the pruner compares a configuration's seeds with the other trials' same seeds
(`MeanOfSeedsPruner` by default; Optuna's `WilcoxonPruner` takes the same reports), so a
configuration clearly worse after two seeds does not get a third. The trial's value is
the mean; its standard deviation and the seeds' values are user attributes.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import warnings

import optuna
from omegaconf import OmegaConf, open_dict
from optuna.trial import TrialState

from experiment.errors import SweepError
from experiment.sweep import context as sweep_context

STD_ATTR = "value_std"  # the standard deviation over a trial's seeds
VALUES_ATTR = "seed_values"  # each seed's objective value(s), in seed order


def base_seed(config, seed_key: str) -> int:
    """The seed the first repeat gets; SweepError where `seed_key` holds no integer."""
    base = OmegaConf.select(config, seed_key, default=None)
    if isinstance(base, bool) or not isinstance(base, int):
        raise SweepError(
            f"hydra.sweeper.repeats: {seed_key} is {base!r} in this config, not an integer "
            "seed; set hydra.sweeper.seed_key to the key that seeds a run"
        )
    return base


def seed_config(job_config, seed_key: str, index: int):
    """The job config of repeat `index`: its seed moved by `index`, its own job folder."""
    config = copy.deepcopy(job_config)
    base = base_seed(config, seed_key)
    with open_dict(config):
        OmegaConf.update(config, seed_key, base + index)
        config.hydra.sweep.subdir = f"{config.hydra.sweep.subdir}/seed{index}"
        config.hydra.job.id = f"{config.hydra.job.id}_seed{index}"
    return config


def run_repeats(run_one, job_config, context, repeats: int, seed_key: str):
    """Run the trial's `repeats` seeds with `run_one(job_config)` -> (state, value, error);
    (state, mean value, error) for the trial. A seed that fails fails the trial."""
    trial = context.trial
    several = len(trial.study.directions) > 1
    # In a torchrun group every rank runs the seeds; rank 0 alone records them, and no seed
    # is pruned: the ranks would have to agree on it, or one would wait for the others.
    main_rank = int(os.environ.get("RANK", "0")) == 0
    in_group = int(os.environ.get("WORLD_SIZE", "1")) > 1
    context.continues = None  # a lost repeated trial's seeds start anew (a requeued job's too)
    values = []
    for index in range(repeats):
        context.repeat = index
        state, value, error = run_one(seed_config(job_config, seed_key, index))
        if state != sweep_context.COMPLETE:
            return state, None, f"seed {index + 1} of {repeats}: {error}"
        values.append(value)
        if not main_rank:
            continue
        trial.set_user_attr(VALUES_ATTR, list(values))
        if several:  # Optuna prunes single-objective studies only
            continue
        with warnings.catch_warnings():  # a requeued or retried trial reports a seed again
            warnings.filterwarnings("ignore", message="The reported value is ignored")
            trial.report(value, index)
        if index < repeats - 1 and not in_group and trial.should_prune():
            mean = statistics.fmean(values)
            return (
                sweep_context.PRUNED,
                None,
                f"pruned after {index + 1} of {repeats} seeds (mean {mean:.4f})",
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
