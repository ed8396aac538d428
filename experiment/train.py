"""The command line of a run: compose the config, then `experiment.training.run`.

python -m experiment.train [group=option ...] [key=value ...]
python -m experiment.train -m hparams_search=optuna      # a sweep
"""

from __future__ import annotations

import logging
import os
import sys

import hydra

from experiment.config.project import config_dir_of_project, importable_from_here
from experiment.config.schema import register_configs
from experiment.config.yaml_check import check_folders, config_dirs_of
from experiment.errors import ConfigError, ExperimentError
from experiment.sweep import context as sweep_context
from experiment.system.console import split_streams
from experiment.system.process_exit import run_then_exit
from experiment.system.signals import stop_on_sigterm

# The sweeper looks for the workers' preload and warm-up hooks in the task's module.
from experiment.training.run import preload_sweep_workers, run, warm_up_sweep_worker

__all__ = [
    "cli",
    "main",
    "preload_sweep_workers",
    "run",
    "run_reporting_errors",
    "warm_up_sweep_worker",
]

log = logging.getLogger("experiment")
register_configs()

# An absolute path, so the console script finds conf/ as `python -m` does: the installed
# package's own, or the checkout's.
CONFIG_DIR = str(config_dir_of_project())


def run_reporting_errors(cfg) -> float:
    """`run`, with a user's mistake (an ExperimentError) reported as one line and an exit
    code instead of a traceback; inside a sweep the sweeper records it and goes on."""
    try:
        return run(cfg)
    except ExperimentError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or sweep_context.current():
            raise
        log.error("%s: %s", type(err).__name__, err)
        raise SystemExit(err.exit_code) from None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg) -> float:
    split_streams()  # warnings and errors to stderr, progress to stdout
    importable_from_here()
    stop_on_sigterm()
    return run_reporting_errors(cfg)


def cli() -> None:
    """The `experiment-train` command (and `python -m experiment.train`)."""
    run_then_exit(checked_main)


def checked_main() -> None:
    """`main`, once the config folders' files read as YAML (an error: one line, exit 1,
    as for the other config errors Hydra reports before a run starts)."""
    try:
        check_folders([CONFIG_DIR, *config_dirs_of(sys.argv[1:])])
    except ConfigError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    main()


if __name__ == "__main__":
    cli()
