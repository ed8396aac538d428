"""The Python API, for notebooks and scripts: compose a config as the CLI would, run it.

    import experiment

    cfg = experiment.compose(["task=regression", "dataset=diabetes"], config_dir="conf")
    value = experiment.run(cfg)  # trains, tracks in MLflow as the CLI does, returns the objective

`config_dir` adds a folder of the user's own option files (model/, dataset/, ...) to
every group, as `--config-dir` does on the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from experiment.config.project import compose

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["compose", "run"]


def run(cfg: DictConfig) -> float | list[float]:
    """Train and test `cfg` (from `compose`), tracked as the CLI tracks a run; the value of
    `optimized_metric` (a list for several objectives)."""
    from experiment.training.run import run as run_config

    return run_config(cfg)
