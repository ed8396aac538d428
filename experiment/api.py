"""The Python API, for notebooks and scripts: compose a config as the CLI would, run it.

    import experiment

    cfg = experiment.compose(["task=regression", "dataset=diabetes"], config_dir="conf")
    value = experiment.run(cfg)  # trains, tracks in MLflow as the CLI does, returns the objective

`config_dir` adds a folder of the user's own option files (model/, dataset/, ...) to
every group, as `--config-dir` does on the command line.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from experiment.config.project import compose
from experiment.system.console import split_streams

if TYPE_CHECKING:
    from omegaconf import DictConfig

__all__ = ["compose", "run"]


def run(cfg: DictConfig) -> float | list[float]:
    """Train and test `cfg` (from `compose`), tracked as the CLI tracks a run; the value of
    `optimized_metric` (a list for several objectives). Its progress shows as on the
    command line, also where nothing configured logging (a notebook)."""
    from experiment.training.run import run as run_config

    with progress_shown():
        return run_config(cfg)


@contextlib.contextmanager
def progress_shown() -> Iterator[None]:
    """The run's log lines on stdout, as the CLI's, unless logging is configured already
    (a handler of the caller's then shows them, or the caller chose not to)."""
    logger = logging.getLogger("experiment")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    split_streams(logger)  # warnings and errors to stderr, as the CLI's
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for added in list(logger.handlers):
            logger.removeHandler(added)
        logger.setLevel(level)
