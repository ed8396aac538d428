"""The face Hydra discovers: `hydra/sweeper=experiment_optuna`.

Hydra's plugin scan imports every module of this namespace on every command, a single
run included, so this module imports nothing but Hydra's base class. The sweep engine
(`experiment.sweep`, with Optuna) is imported when a multirun builds the sweeper, as the
official hydra-optuna-sweeper's face imports its `_impl`.
"""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ExperimentOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        from experiment.sweep.sweeper import SweepEngine

        self.engine = SweepEngine(**settings)

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.engine.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.engine.sweep(arguments)
