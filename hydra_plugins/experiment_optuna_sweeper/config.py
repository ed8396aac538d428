"""The sweeper's config node, registered as `hydra/sweeper=experiment_optuna`."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class ExperimentOptunaSweeperConf:
    _target_: str = "hydra_plugins.experiment_optuna_sweeper.sweeper.ExperimentOptunaSweeper"
    # null: follow the task's `optimized_direction`
    direction: str | None = None
    # Finished trials (complete, pruned or failed) the study should hold, across all runs.
    n_trials: int = 20
    # Trials running at once, each in its own long-lived worker process.
    n_jobs: int = 1
    # null: derived from the search space and fixed overrides, so the same command resumes.
    study_name: str | None = None
    # An Optuna RDB URL (sqlite:///..., postgresql://...); null keeps the study in memory.
    storage: str | None = "sqlite:///multirun/optuna.db"
    # tpe | random | cmaes | qmc, or a node with _target_ (e.g. optuna.samplers.TPESampler)
    sampler: Any = "tpe"
    seed: int | None = 0
    # median | hyperband | successive_halving | none, or a node with _target_
    pruner: Any = "median"
    # Search space in the official Optuna sweeper's syntax: key: interval(a, b) etc.
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper",
    name="experiment_optuna",
    node=ExperimentOptunaSweeperConf,
    provider="experiment",
)
