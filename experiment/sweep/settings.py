"""The sweeper's settings (`hydra.sweeper.*`), checked before any study is touched."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from hydra.utils import get_method
from omegaconf import OmegaConf

from experiment.errors import SweepError
from experiment.sweep import study as studies
from experiment.sweep.protocol import DEFAULT_STORAGE

log = logging.getLogger(__name__)
# hydra/launcher options whose jobs the sweeper submits itself (jobs.py), by cluster.
LAUNCHERS = {"submitit_slurm": "slurm", "submitit_local": "local"}


def plain(value: Any) -> Any:
    """A config value as plain Python values."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@dataclass
class SweepSettings:
    """`hydra.sweeper.*` as plain values (see config.py for each key's meaning)."""

    direction: Any
    n_trials: int
    n_jobs: int
    study_name: str | None
    storage: str | None
    sampler: Any
    seed: int | None
    pruner: Any
    params: dict = field(default_factory=dict)
    max_failure_rate: float = 1.0
    custom_search_space: str | None = None
    enqueue_trials: list = field(default_factory=list)
    warm_start: Any = None
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    devices_per_trial: int = 1
    timeout: float | None = None
    target: Any = None
    patience: int | None = None
    constraints: list = field(default_factory=list)
    preload: list = field(default_factory=list)
    max_retries: int = 3
    repeats: int = 1
    seed_key: str = "trainer.seed"
    folds: int = 1
    fold_key: str = "dataset.fold"
    warm_up_function: str | None = None
    preload_function: str | None = None
    storage_patience: float = 120.0

    @classmethod
    def of(cls, **values) -> SweepSettings:
        settings = cls(**{key: plain(value) for key, value in values.items()})
        settings.params = settings.params or {}
        settings.enqueue_trials = settings.enqueue_trials or []
        settings.constraints = settings.constraints or []
        settings.preload = settings.preload or []
        return settings

    def location(self, name: str) -> studies.StudyLocation:
        return studies.StudyLocation(
            self.storage, name, self.heartbeat_interval, self.grace_period, self.storage_patience
        )

    @property
    def unclaimed_after(self) -> float:
        """Seconds an asked trial may stay without its worker before it counts as
        abandoned: an ask cut by an outage is waited out for storage_patience first."""
        return float(self.storage_patience) + studies.UNCLAIMED_MARGIN_S

    @property
    def units(self):
        """The runs each trial makes: repeats x folds (repeats.Units)."""
        from experiment.sweep.repeats import Units

        return Units(self.repeats, self.folds, self.seed_key, self.fold_key)

    def make_pruner(self, n_objectives: int):
        """The configured pruner; unset with repeats or folds, one that compares a trial's
        units so far with the other trials' same units (repeats.py)."""
        if self.units.several and self.pruner is None and n_objectives == 1:
            from experiment.sweep.repeats import MeanOfSeedsPruner

            return MeanOfSeedsPruner()
        return studies.make_pruner(self.pruner, n_objectives)

    def warm_up(self, job_config):
        """What n_jobs > 1 workers get ready with (workers.WarmUp); `job_config`: the
        task's config with the sweep's fixed overrides."""
        from experiment.sweep.workers import WarmUp

        return WarmUp(job_config, self.preload, self.warm_up_function, self.preload_function)

    @property
    def worker_grace_seconds(self) -> float:
        """How long a worker process in a trial may be silent (stopped, hung) before it
        is declared lost: grace_period, else 2 x heartbeat_interval, else a minute."""
        if self.grace_period:
            return float(self.grace_period)
        return 2.0 * self.heartbeat_interval if self.heartbeat_interval else 60.0

    def check(self) -> None:
        if self.n_trials < 1:
            raise SweepError(f"hydra.sweeper.n_trials={self.n_trials}: needs an integer >= 1")
        if self.n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_jobs={self.n_jobs}: needs an integer >= 1")
        if self.n_jobs > 1 and not self.storage:
            raise SweepError(
                "hydra.sweeper.n_jobs > 1 needs a database storage that the "
                f"workers share: set hydra.sweeper.storage={DEFAULT_STORAGE}"
            )
        self._check_devices_per_trial()
        self._check_counts()
        function_path(self.warm_up_function, "warm_up_function")
        function_path(self.preload_function, "preload_function")
        patience = self.storage_patience
        if isinstance(patience, bool) or not isinstance(patience, int | float) or patience <= 0:
            raise SweepError(
                f"hydra.sweeper.storage_patience={patience}: needs a number of seconds > 0 "
                "(how long a storage outage is waited out)"
            )
        rate = self.max_failure_rate
        if not isinstance(rate, float | int) or not (0.0 <= rate <= 1.0):
            raise SweepError(
                f"hydra.sweeper.max_failure_rate={rate}: needs a number in "
                "[0, 1] (the share of finished trials that may fail)"
            )

    def _check_counts(self) -> None:
        """The integer settings that are not checked elsewhere, each in its range."""
        wanted = {
            "max_retries": (self.max_retries, 0, "an integer >= 0"),
            "repeats": (self.repeats, 1, "an integer >= 1 (seeds per configuration)"),
            "folds": (self.folds, 1, "an integer >= 1 (cross-validation folds; 1: none)"),
            "heartbeat_interval": (self.heartbeat_interval, 1, "null or an integer >= 1"),
            "grace_period": (self.grace_period, 1, "null or an integer >= 1 (seconds)"),
        }
        if self.seed is not None:  # what NumPy seeds take, as trainer.seed
            wanted["seed"] = (self.seed, 0, "null or an integer in [0, 2**32 - 1]")
        for key, (value, lowest, what) in wanted.items():
            if value is None and key in ("heartbeat_interval", "grace_period"):
                continue
            if key == "seed" and isinstance(value, int) and value >= 2**32:
                raise SweepError(f"hydra.sweeper.seed={value}: needs {what}")
            if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                raise SweepError(f"hydra.sweeper.{key}={value}: needs {what}")

    def _check_devices_per_trial(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would run its own sweep
            raise SweepError(
                "a sweep does not run under torchrun: start it as one command and set "
                "hydra.sweeper.devices_per_trial=K to train each trial on K devices"
            )
        k = self.devices_per_trial
        if not isinstance(k, int) or k < 1:
            raise SweepError(f"hydra.sweeper.devices_per_trial={k}: needs an integer >= 1")
        if k > 1 and not self.storage:
            raise SweepError(
                "hydra.sweeper.devices_per_trial > 1 runs each trial as its own process "
                "group, which reports through a database storage: set "
                f"hydra.sweeper.storage={DEFAULT_STORAGE}"
            )
        gpus = gpu_count() if k > 1 else 0  # torch is imported only where it is needed
        if k > 1 and gpus and k * self.n_jobs > gpus:
            raise SweepError(
                f"hydra.sweeper.devices_per_trial={k} x n_jobs={self.n_jobs} needs "
                f"{k * self.n_jobs} GPUs; this machine has {gpus}. Lower n_jobs or "
                "devices_per_trial."
            )

    def check_launcher(self, launcher: str | None) -> None:
        """A submitit launcher needs a shared storage; any other launcher is not used."""
        if launcher in LAUNCHERS:
            if not self.storage:
                raise SweepError(
                    f"hydra/launcher={launcher} runs each trial as a job that reports to the "
                    "study through its database: set hydra.sweeper.storage to one the jobs "
                    "reach (postgresql://..., or sqlite:/// on a filesystem they share)"
                )
            if self.devices_per_trial > 1:
                raise SweepError(
                    f"hydra/launcher={launcher} with hydra.sweeper.devices_per_trial > 1: ask "
                    "for the GPUs per job with hydra.launcher.gpus_per_node instead"
                )
            return
        if launcher not in (None, "basic"):
            log.warning(
                "hydra/launcher=%s is not used: this sweeper runs each trial in its own "
                "process (n_jobs=1) or in hydra.sweeper.n_jobs long-lived worker processes; "
                "set hydra.sweeper.n_jobs for parallel trials.",
                launcher,
            )


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def function_path(path: str | None, key: str) -> str | None:
    """`path` (`hydra.sweeper.KEY`), checked here: it must name a function."""
    if path:
        try:
            if not callable(get_method(path)):
                raise TypeError(f"{path} is not a function")
        except Exception as err:
            raise SweepError(
                f"hydra.sweeper.{key}={path}: cannot import it ({type(err).__name__}: "
                f"{err}). Give the dotted path of a function (cfg) -> None."
            ) from None
    return path
