"""Rules that tie keys together, in one table beside the fields' own (`allowed.py`).

A field's rule sees its own value; these see the whole config: combinations that pass
every field's rule and would still crash or mislead mid-training. Checked by
`RunConfig.enter` once every field passed, before any data is loaded; the message names
the key to change. Rules that need the data are `training/data_rules.py`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from experiment.errors import ConfigValueError


def _get(node: Any, name: str, default=None):
    return node.get(name, default) if isinstance(node, dict) else getattr(node, name, default)


def _schedule_is(config, name: str) -> bool:
    return str(_get(_get(config.scheduler, "schedule"), "_target_", "")).endswith(name)


def _plateau(config) -> bool:
    return _schedule_is(config, "ReduceLROnPlateau")


def _one_cycle(config) -> bool:
    return _schedule_is(config, "OneCycleLR")


@dataclass(frozen=True)
class CrossRule:
    key: str  # the key the message names: the one to change
    applies: Callable[[Any], bool]  # the combination the rule is about
    holds: Callable[[Any], bool]  # what must then be true
    allowed: str  # what is allowed, as the message says it


RULES = (
    CrossRule("scheduler.schedule.mode", _plateau,
              lambda c: c.scheduler.schedule.mode in ("min", "max"),
              "min (a loss) or max (an accuracy)"),
    CrossRule("scheduler.monitor", _plateau, lambda c: str(c.scheduler.monitor).startswith("val/"),
              "a validation metric the run logs each epoch, such as val/loss"),
    CrossRule("scheduler.interval", _plateau, lambda c: c.scheduler.interval.name == "epoch",
              "epoch with scheduler=plateau: it steps on an epoch's metric"),
    CrossRule("scheduler.interval", _one_cycle, lambda c: c.scheduler.interval.name == "step",
              "step with scheduler=onecycle: its schedule is counted in batches"),
    CrossRule("scheduler.schedule.epochs", _one_cycle,
              lambda c: c.scheduler.schedule.epochs >= c.trainer.epochs,
              "at least trainer.epochs: OneCycleLR refuses a step past its total"),
    CrossRule("optimizer.momentum", lambda c: bool(_get(c.optimizer, "nesterov", False)),
              lambda c: _get(c.optimizer, "momentum", 0) > 0,
              "a number > 0 with optimizer.nesterov=true (or set optimizer.nesterov=false)"),
    CrossRule("task.loss.reduction", lambda c: _get(_get(c.task, "loss"), "reduction") is not None,
              lambda c: _get(_get(c.task, "loss"), "reduction") in ("mean", "sum"),
              "mean or sum: training needs one loss value per batch"),
    CrossRule("trainer.accumulate_grad_batches",
              lambda c: c.trainer.accumulate_grad_batches > 1
              and _get(_get(c.task, "loss"), "reduction") == "sum",
              lambda c: False, "1 with a loss of reduction=sum (the groups weigh each sample)"),
    CrossRule("trainer.limit_batches", lambda c: c.trainer.overfit_batches is not None,
              lambda c: c.trainer.limit_batches is None,
              "null with trainer.overfit_batches (which sets the batches an epoch takes)"),
    CrossRule("dataset.fold", lambda c: c.dataset.folds is not None or c.dataset.fold is not None,
              lambda c: c.dataset.folds is not None and c.dataset.fold is not None
              and c.dataset.fold < c.dataset.folds,
              "an integer in [0, dataset.folds - 1], set together with dataset.folds"),
    CrossRule("dataset.train_on_val", lambda c: c.dataset.folds is not None,
              lambda c: not c.dataset.train_on_val,
              "false with dataset.folds (a fold's validation part is held out)"),
    CrossRule("tracking.experiment_name", lambda c: bool(_get(c.tracking, "enabled", False)),
              lambda c: bool(str(_get(c.tracking, "experiment_name", "")).strip()),
              "a non-empty name"),
)  # fmt: skip


def check_rules(config) -> None:
    """ConfigValueError for the first rule of RULES that `config` (the typed Config)
    breaks."""
    for rule in RULES:
        if rule.applies(config) and not rule.holds(config):
            value = config
            for part in rule.key.split("."):
                value = _get(value, part)
            value = getattr(value, "name", value)  # an enum by its name
            raise ConfigValueError(rule.key, value, rule.allowed)
