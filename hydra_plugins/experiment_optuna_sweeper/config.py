"""The sweeper's config node, registered as `hydra/sweeper=experiment_optuna`, and the
`hydra/sweeper/sampler` group: one option per Optuna sampler, each a `_target_` node whose
arguments are settable (`hydra.sweeper.sampler.seed=1`), as in the official
hydra-optuna-sweeper. `hydra.sweeper.sampler=NAME` (a short form) works too."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from experiment.sweep.protocol import DEFAULT_STORAGE


@dataclass
class SamplerConf:
    _target_: str = "optuna.samplers.TPESampler"
    # null: hydra.sweeper.seed. Each process that joins a shared study adds its join index.
    seed: int | None = None


@dataclass
class TPESamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.TPESampler"
    n_startup_trials: int = 10
    n_ei_candidates: int = 24
    multivariate: bool = False
    group: bool = False
    constant_liar: bool = True  # parallel workers do not all sample the same point


@dataclass
class RandomSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.RandomSampler"


@dataclass
class CmaEsSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.CmaEsSampler"
    n_startup_trials: int = 1
    sigma0: float | None = None
    restart_strategy: str | None = None
    popsize: int | None = None
    use_separable_cma: bool = False
    with_margin: bool = False


@dataclass
class NSGAIISamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.NSGAIISampler"
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class NSGAIIISamplerConf(NSGAIISamplerConf):
    _target_: str = "optuna.samplers.NSGAIIISampler"
    dividing_parameter: int = 3


@dataclass
class QMCSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.QMCSampler"
    qmc_type: str = "sobol"
    scramble: bool = False


@dataclass
class GPSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.GPSampler"
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class GridSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.GridSampler"
    # null: the grid of the search space (`params`: choice and range entries).
    search_space: Any = None


@dataclass
class BruteForceSamplerConf(SamplerConf):
    _target_: str = "optuna.samplers.BruteForceSampler"
    avoid_premature_stop: bool = False


SAMPLER_OPTIONS = {
    "tpe": TPESamplerConf,
    "random": RandomSamplerConf,
    "cmaes": CmaEsSamplerConf,
    "nsgaii": NSGAIISamplerConf,
    "nsgaiii": NSGAIIISamplerConf,
    "qmc": QMCSamplerConf,
    "gp": GPSamplerConf,
    "grid": GridSamplerConf,
    "bruteforce": BruteForceSamplerConf,
}


@dataclass
class WarmStartConf:
    study_name: str = "???"
    storage: str | None = None  # null: this sweep's storage


@dataclass
class ExperimentOptunaSweeperConf:
    _target_: str = "hydra_plugins.experiment_optuna_sweeper.sweeper.ExperimentOptunaSweeper"
    # The sampler and pruner nodes reach the sweeper as config: it builds them itself, with
    # the search space (grid) and each process's own seed.
    _recursive_: bool = False
    # The keys below first, then the sampler option over `sampler: null` (the other way
    # round, the null would replace the option's node).
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}])
    # maximize | minimize, or a list of them (one per objective). null: the task's
    # `optimized_direction` where it has one, else minimize (as the official plugin). Set,
    # it is the one source: the task's `optimized_direction` follows it in every trial.
    direction: Any = None
    # Finished trials (complete, pruned or failed) the study should hold, across all runs.
    n_trials: int = 20
    # Trials running at once, each in its own long-lived worker process.
    n_jobs: int = 1
    # Devices (GPUs, or CPU processes with gloo) each trial trains on: k > 1 starts every
    # trial as a torchrun process group of k ranks; n_jobs groups run at once.
    devices_per_trial: int = 1
    # null: derived from the search space and fixed overrides, so the same command resumes.
    study_name: str | None = None
    # An Optuna RDB URL (sqlite:///..., postgresql://...); null keeps the study in memory.
    storage: str | None = DEFAULT_STORAGE
    # A node of the hydra/sweeper/sampler group, a short name (tpe, random, cmaes, nsgaii,
    # nsgaiii, qmc, gp, grid, bruteforce) or any node with _target_.
    sampler: Any = None
    seed: int | None = 0
    # median | hyperband | successive_halving | none, or a node with _target_.
    # null: median for one objective, none for several (Optuna prunes single objectives only).
    pruner: Any = None
    # Once more than this share of the finished trials failed, the sweep stops (exit 2).
    max_failure_rate: float = 1.0
    # Stop conditions (a sweep ended by one exits 0; running trials finish). timeout:
    # seconds from this invocation's first trial after which no trial starts (a rerun has
    # its own clock; opening the study and the parent run do not count). target: stop once
    # a finished (feasible) trial reaches this objective value (a list: one per objective,
    # all reached). patience: stop after this many finished
    # trials in a row without a new best (several objectives: a new Pareto-front trial).
    timeout: float | None = None
    target: Any = None
    patience: int | None = None
    # "MEASURE <= NUMBER" or "MEASURE >= NUMBER" on measures the trials record (the
    # project's runs: model/params, model/latency_ms, peak_rss_mb, train_time_s, val/...),
    # for the samplers that use constraints (tpe, nsgaii, nsgaiii, gp); others are refused.
    constraints: list[str] = field(default_factory=list)
    # Search space in the official Optuna sweeper's syntax: key: interval(a, b) etc.
    params: dict[str, Any] = field(default_factory=dict)
    # Dotted path of a function (cfg, trial) -> None that suggests more parameters, e.g.
    # ones that exist only for some values of another (conditional spaces).
    custom_search_space: str | None = None
    # Parameter sets evaluated first, e.g. the best configuration known so far.
    enqueue_trials: list[dict[str, Any]] = field(default_factory=list)
    # Another study (a name, or {study_name, storage}) whose finished trials seed a new study.
    warm_start: Any = None
    # A database storage fails trials whose process stopped sending heartbeats (a lost
    # machine) after grace_period seconds (null: 2 x heartbeat_interval); null: off. The
    # n_jobs > 1 workers of one sweep beat to it directly: one silent for the same grace
    # period (a minute with heartbeats off) is killed, and its trial retried.
    heartbeat_interval: int | None = 30
    grace_period: int | None = None
    # Seconds a storage outage (a database restart, a failover, a locked SQLite file) is
    # waited out by every storage call of the sweep's processes before the sweep stops.
    storage_patience: float = 120.0
    # A lost trial (its process killed or silent, its job cancelled, preempted or timed
    # out) is failed and its configuration queued again, continuing from its checkpoint in
    # its MLflow run; it does not count against n_trials. At most this many times each.
    max_retries: int = 3
    # Seeds per configuration: each trial trains `repeats` times, seed_key = its value,
    # + 1, ... (each seed a run nested under the trial's MLflow run); its objective is the
    # mean, `value_std` the standard deviation. Pruning (null: MeanOfSeedsPruner) acts on
    # the seeds so far: a configuration clearly worse after two seeds gets no third.
    repeats: int = 1
    seed_key: str = "trainer.seed"
    # K-fold cross-validation: each trial trains K times, fold_key = 0, ..., K-1 and its
    # sibling `folds` = K (dataset.folds), each fold a run nested under the trial's run;
    # its objective is the mean over folds (`value_std`, `fold_values`), pruned after each
    # fold as with repeats; with repeats, K x R runs (each seed's folds in turn). The test
    # split is never a fold. experiment-promote retrains the chosen trial on train + val.
    folds: int = 1
    fold_key: str = "dataset.fold"
    # Modules each of the n_jobs > 1 workers imports before its first trial (a missing one
    # is skipped).
    preload: list[str] = field(default_factory=list)
    # The dotted path of a function (cfg) -> None that each n_jobs > 1 worker calls once
    # before its first trial, with the task's config of the sweep's fixed overrides: what
    # a trial does on first use (open a store, parse the data), so the first trial costs
    # what the next ones do. `__main__.NAME` names a function of a script's own module.
    warm_up_function: str | None = None
    # The dotted path of a function (cfg) -> None called once in the sweep's own process
    # before the workers are forked from it (Linux, trials without GPUs): what it imports
    # and computes, every worker then holds. Nothing that opens a store or a file.
    preload_function: str | None = None


store = ConfigStore.instance()
store.store(
    group="hydra/sweeper",
    name="experiment_optuna",
    node=ExperimentOptunaSweeperConf,
    provider="experiment",
)
for _name, _node in SAMPLER_OPTIONS.items():
    # Stored untyped: `sampler: random` (a short name) may then replace the node in YAML too.
    store.store(
        group="hydra/sweeper/sampler",
        name=_name,
        node=OmegaConf.to_container(OmegaConf.structured(_node)),
        provider="experiment",
    )
