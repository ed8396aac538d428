"""Where the config enters the code: value checks a type cannot express, and the one
conversion of config enums to plain strings.

`plain_config` and `validate` run first in every run, before any data is loaded, so a
bad value gives one message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiment.errors import ConfigError, ConfigValueError
from experiment.schema import dataset_defaults


def plain_config(cfg: DictConfig) -> DictConfig:
    """The same config with enum values as their strings and no schema attached, so code
    past this point sees 'cuda', never Device.cuda. Interpolations stay unresolved. A
    dataset option of a user's own (no schema of ours) gets the dataset keys it leaves
    out from their defaults."""
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    if isinstance(container.get("dataset"), dict):
        container["dataset"] = {**dataset_defaults(), **container["dataset"]}
    return OmegaConf.create(container)


def _positive(v) -> bool:
    return v > 0 and math.isfinite(v)


def _at_least_one(v) -> bool:
    return v >= 1


def _unit_open_right(v) -> bool:
    return 0 <= v < 1


def _unit_open(v) -> bool:
    return 0 < v < 1


def _non_negative(v) -> bool:
    return v >= 0 and math.isfinite(v)


def _all_positive(v) -> bool:
    return len(v) > 0 and all(x >= 1 for x in v)


# (key, check, what is allowed). Keys absent from the composed config are skipped, so
# one table serves every combination of group options.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("optimizer.lr", _positive, "a finite number > 0"),
    ("optimizer.weight_decay", _non_negative, "a number >= 0"),
    ("optimizer.momentum", _unit_open_right, "a number in [0, 1)"),
    ("dataset.batch_size", _at_least_one, "an integer >= 1"),
    ("dataset.eval_batch_size", _at_least_one, "an integer >= 1"),
    ("dataset.val_fraction", _unit_open, "a number strictly between 0 and 1"),
    ("dataset.test_fraction", _unit_open, "a number strictly between 0 and 1"),
    ("dataset.crop_padding", lambda v: v >= 0, "an integer >= 0"),
    ("dataset.num_workers", lambda v: v >= 0, "an integer >= 0"),
    (
        "dataset.std",
        lambda v: len(v) > 0 and all(x > 0 for x in v),
        "null or a list of numbers > 0",
    ),
    ("dataset.source.test_fraction", _unit_open, "a number strictly between 0 and 1"),
    ("dataset.source.num_train", lambda v: v >= 2, "an integer >= 2"),
    ("dataset.source.num_test", _at_least_one, "an integer >= 1"),
    ("dataset.source.num_classes", lambda v: v >= 2, "an integer >= 2"),
    ("dataset.source.channels", _at_least_one, "an integer >= 1"),
    ("dataset.source.features", _at_least_one, "an integer >= 1"),
    ("dataset.source.targets", _at_least_one, "an integer >= 1"),
    ("dataset.source.noise", _non_negative, "a number >= 0"),
    ("dataset.source.height", _at_least_one, "an integer >= 1"),
    ("dataset.source.width", _at_least_one, "an integer >= 1"),
    ("dataset.source.image_size", _at_least_one, "an integer >= 1"),
    ("regularization.dropout", _unit_open_right, "a number in [0, 1)"),
    ("regularization.weight_decay", _non_negative, "a number >= 0"),
    ("regularization.label_smoothing", _unit_open_right, "a number in [0, 1)"),
    ("regularization.grad_clip", _positive, "null or a number > 0"),
    ("regularization.early_stopping.patience", _at_least_one, "null or an integer >= 1"),
    ("model.dropout", _unit_open_right, "a number in [0, 1)"),
    ("model.hidden_sizes", _all_positive, "a non-empty list of integers >= 1"),
    ("model.channels", _all_positive, "a non-empty list of integers >= 1"),
    ("model.kernel_size", _at_least_one, "an integer >= 1"),
    ("model.hidden_size", _at_least_one, "an integer >= 1"),
    ("model.init_std", _positive, "a number > 0"),
    (
        "model.unfreeze_at_epoch",
        lambda v: v >= 2,
        "null or an integer >= 2 (the first epoch that trains the whole model)",
    ),
    ("optimizer.backbone_lr_scale", _positive, "null or a number > 0"),
    ("dataset.cache_max_gb", _positive, "a number > 0"),
    (
        "dataset.resized_crop_scale",
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
        "null or [min, max] with 0 < min <= max <= 1",
    ),
    ("trainer.epochs", _at_least_one, "an integer >= 1"),
    ("trainer.dist_timeout", _positive, "a number of seconds > 0"),
    ("scheduler.schedule.step_size", _at_least_one, "an integer >= 1"),
    ("scheduler.schedule.gamma", _positive, "a number > 0"),
    ("scheduler.schedule.T_max", _at_least_one, "an integer >= 1"),
    ("scheduler.schedule.max_lr", _positive, "a number > 0"),
    ("scheduler.schedule.pct_start", _unit_open, "a number strictly between 0 and 1"),
    ("scheduler.schedule.factor", lambda v: 0 < v <= 1, "a number in (0, 1]"),
]


# Objectives a run measures besides its validation metrics (see `run`).
RUN_MEASURES = {
    "model/params": "trainable parameters",
    "model/latency_ms": "inference time per image on the training device",
    "train_time_s": "training time",
}


def _as_list(value) -> list:
    """`optimized_metric` and `optimized_direction` are one string or a list of them."""
    return [value] if isinstance(value, str) else list(value)


def objectives(cfg: DictConfig) -> list[tuple[str, str]]:
    """(metric, direction) for each objective of `optimized_metric`."""
    metrics, directions = _as_list(cfg.optimized_metric), _as_list(cfg.optimized_direction)
    return list(zip(metrics, directions, strict=False))


def _check_objectives(cfg: DictConfig) -> None:
    metrics, directions = _as_list(cfg.optimized_metric), _as_list(cfg.optimized_direction)
    if len(metrics) != len(directions) or not metrics:
        raise ConfigValueError(
            "optimized_direction", directions, f"one direction per optimized metric ({metrics})"
        )
    for value in directions:
        if value not in ("maximize", "minimize"):
            raise ConfigValueError("optimized_direction", value, "maximize or minimize")
    if not str(metrics[0]).startswith("val/"):
        raise ConfigValueError(
            "optimized_metric",
            metrics[0],
            "a validation metric such as 'val/acc' or 'val/loss' "
            "(the test split is never used for selection)",
        )
    for value in metrics[1:]:
        if not str(value).startswith("val/") and value not in RUN_MEASURES:
            allowed = ", ".join(RUN_MEASURES)
            raise ConfigValueError(
                "optimized_metric", value, f"a validation metric (val/...) or one of {allowed}"
            )


def validate(cfg: DictConfig) -> None:
    """Raise ConfigValueError for a missing value or the first value out of range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"Missing value for '{missing[0]}': it has no default. "
            f"Set it on the command line: {missing[0]}=<value>"
        )
    for key, check, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:  # absent in this composition, or an allowed null
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not check(value):
            raise ConfigValueError(key, value, allowed)
    _check_objectives(cfg)
    if cfg.model.get("unfreeze_at_epoch") is not None and not cfg.model.get("freeze_backbone"):
        raise ConfigValueError(
            "model.unfreeze_at_epoch",
            cfg.model.unfreeze_at_epoch,
            "null unless model.freeze_backbone=true (it says when a frozen backbone thaws)",
        )
