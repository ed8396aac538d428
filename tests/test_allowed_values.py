"""Every numeric key of every group option refuses NaN, infinity and a value outside what
its field allows, with one message naming the key, the value and what is allowed; the
rule comes from the field's declaration in the schema, so a new key is covered here the
moment it is declared."""

from __future__ import annotations

import copy
import dataclasses
import functools
import math

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from experiment.config.allowed import RULE, check_fields
from experiment.config.run_config import RunConfig
from experiment.errors import ConfigValueError
from tests.conftest import CONF, compose_config

GROUPS = ["dataset", "model", "optimizer", "scheduler", "regularization", "task"]
# Tried in order: the first value a field's rule refuses is its out-of-range case.
NUMBERS = [-1, 0, 1.5, 2**33, 1e300]
LISTS = [[-1], [], [0.5, 2.0, 3.0], [2.0, 1.0]]


def compositions() -> list[list[str]]:
    """Few compositions that together hold every option of every group (the i-th option
    of each group in the i-th; the config is never built, so they need not fit)."""
    options = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in GROUPS}
    found = []
    for index in range(max(len(names) for names in options.values())):
        overrides = [f"{g}={names[index]}" for g, names in options.items() if index < len(names)]
        if "dataset=image_folder" in overrides:
            overrides.append("dataset.source.path=/some/images")
        found.append(overrides)
    return found


def numeric_fields(node, prefix: str):
    """(key, field, value) of every int/float (or list of them) field under `node`."""
    for field in dataclasses.fields(node):
        value, key = getattr(node, field.name), f"{prefix}.{field.name}"
        if dataclasses.is_dataclass(value):
            yield from numeric_fields(value, key)
        elif any(t in str(field.type) for t in ("int", "float")):
            yield key, field, value


def refused(cfg, node, key: str, field, value) -> str:
    """The message of what refuses `key=value`: the schema's type (an int key given NaN,
    as Hydra refuses the override), or the field's rule, as `RunConfig.enter` checks it."""
    if "float" not in str(field.type) and isinstance(value, float) and not math.isfinite(value):
        with pytest.raises(ValidationError) as refusal:
            OmegaConf.update(cfg.copy(), key, value, merge=False)
        return str(refusal.value)
    node = copy.deepcopy(node)
    group, *path, name = key.split(".")
    owner = functools.reduce(getattr, path, node)
    setattr(owner, name, value)
    with pytest.raises(ConfigValueError) as refusal:
        check_fields(node, group)
    return str(refusal.value)


def test_every_numeric_key_refuses_nan_infinity_and_values_out_of_range():
    checked = set()
    for overrides in compositions():
        cfg = compose_config(overrides)
        run = RunConfig.enter(cfg)
        for group in GROUPS + ["trainer"]:
            node = getattr(run, group)
            if not dataclasses.is_dataclass(node):
                continue
            for key, field, value in numeric_fields(node, group):
                if (type(node), key) in checked:
                    continue
                checked.add((type(node), key))
                rule = field.metadata.get(RULE)
                assert rule is not None, f"{key} declares no allowed values"
                is_list = isinstance(value, list) or "list" in str(field.type)
                for bad in ([math.nan], [math.inf]) if is_list else (math.nan, math.inf):
                    message = refused(cfg, node, key, field, bad)
                    assert key.split(".")[-1] in message, message
                outside = next(v for v in (LISTS if is_list else NUMBERS) if not rule(v))
                message = refused(cfg, node, key, field, outside)
                assert f"Invalid value for '{key}'" in message and rule.text in message, message
                assert "\n" not in message
    assert len(checked) > 40  # every group's keys were reached
