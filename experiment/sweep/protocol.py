"""What a sweep, its trials' runs and the commands after it (compare, promote) agree on,
written once: the keys a trial keeps on the study, the parent run's tag, the default
study storage, and what the retry of a lost trial continues.

Imports nothing of the engine (no Optuna): a run, `experiment-promote` and the plugin's
config read it too."""

from __future__ import annotations

from dataclasses import asdict, dataclass

DEFAULT_STORAGE = "sqlite:///multirun/optuna.db"  # the sweeper's default study storage
PARENT_TAG = "sweep.parent"  # "true" on the MLflow run of a whole study
RUN_ID_ATTR = "mlflow_run_id"  # a trial's user attr: its MLflow run
CHECKPOINT_DIR_ATTR = "checkpoint_dir"  # a trial's user attr: where its run checkpoints
CONTINUES_ATTR = "continues"  # a retry's user attr: the LostAttempt it continues
SEED_VALUES_ATTR = "seed_values"  # a trial's user attr: each seed's value (repeats)
FOLD_VALUES_ATTR = "fold_values"  # ... each fold's (folds; with repeats, seed by seed)
UNIT_VALUES_ATTRS = (SEED_VALUES_ATTR, FOLD_VALUES_ATTR)  # a trial holds one of them


@dataclass(frozen=True)
class LostAttempt:
    """The attempt a retry continues (a trial lost with its process, or a requeued job's
    own trial): its number, its MLflow run and its checkpoint folder, where it recorded
    them before it was lost."""

    trial: int
    mlflow_run_id: str | None = None
    checkpoint_dir: str | None = None

    def as_attr(self) -> dict:
        """As the study keeps it (a user attr is JSON)."""
        return asdict(self)

    @classmethod
    def of_attr(cls, value: dict | None) -> LostAttempt | None:
        return cls(**value) if value else None
