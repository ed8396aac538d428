"""A Hydra app whose task returns what `mode` says: a number, None, NaN, text, a tuple of
the wrong length, or raises. The task is a callable object, not a function, and can sleep
(`seconds`) so that a test can catch it mid-trial, and record `x` as a measure for the
sweep's constraints (`record_x`), and note its workers' warm-up (`warm_up_log`). For the
sweeper's any-task tests."""

import math
import os
import time

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from experiment.sweep import context as sweep_context

# A launcher the sweeper does not use, to show that it says so.
ConfigStore.instance().store(
    group="hydra/launcher",
    name="pretend",
    node={"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
)


def warm_up_sweep_worker(cfg: DictConfig) -> None:
    """Each worker of a parallel sweep calls this once, before its first trial;
    `mode=crash_worker` ends the worker there, as a crashing library would."""
    if cfg.mode == "crash_worker":
        os._exit(3)
    if cfg.warm_up_log:
        with open(cfg.warm_up_log, "a") as log:
            log.write(f"warm-up {os.getpid()} mode={cfg.mode}\n")


class Task:
    def __call__(self, cfg: DictConfig):
        if cfg.warm_up_log:
            with open(cfg.warm_up_log, "a") as log:
                log.write(f"trial {os.getpid()}\n")
        time.sleep(cfg.seconds)
        if cfg.record_x:
            sweep_context.record_measures({"x": cfg.x})
        returns = {
            "number": lambda: float(cfg.x),
            "none": lambda: None,
            "not_a_number": lambda: math.nan,
            "text": lambda: "fast",
            "pair": lambda: (cfg.x, cfg.x),
        }
        if cfg.mode == "raise":
            raise RuntimeError("the task failed on purpose")
        return returns[cfg.mode]()


main = hydra.main(version_base="1.3", config_path=".", config_name="tasks")(Task())

if __name__ == "__main__":
    main()
