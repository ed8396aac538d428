"""Hydra sweep syntax to Optuna distributions, as the official Optuna sweeper reads it.

interval(a, b)             float in [a, b]
int(interval(a, b))        int in [a, b]
tag(log, interval(a, b))   log scale
range(a, b[, step])        a, a+step, ... below b (exclusive, like Hydra's own range)
shuffle(range(a, b))       categorical over the range's values, as the official plugin
choice(x, y, ...) / x,y    categorical
"""

from __future__ import annotations

import math
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.utils import get_method
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from experiment.errors import SearchSpaceError, SweepError


def _range_distribution(key: str, text: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    count = math.ceil((stop - start) / step)
    if count < 1:
        raise SearchSpaceError(f"{key}: {text} is empty")
    last = start + (count - 1) * step  # Hydra's range excludes `stop`
    if sweep.shuffle:  # an unordered set of values
        return CategoricalDistribution([start + i * step for i in range(count)])
    if all(isinstance(v, int) for v in (start, stop, step)):
        return IntDistribution(start, last, step=step)
    return FloatDistribution(start, last, step=step)


def _interval_distribution(key: str, text: str, sweep: IntervalSweep) -> BaseDistribution:
    log = "log" in sweep.tags
    if sweep.start >= sweep.end:
        raise SearchSpaceError(f"{key}: {text} needs low < high")
    if log and sweep.start <= 0:
        raise SearchSpaceError(f"{key}: {text}: a log scale needs low > 0")
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return IntDistribution(sweep.start, sweep.end, log=log)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def to_distribution(override: Override) -> BaseDistribution:
    value, key = override.value(), override.get_key_element()
    text = override.input_line.split("=", 1)[-1]
    if isinstance(value, ChoiceSweep):
        choices = [v for v in value.list]
        if not choices:
            raise SearchSpaceError(f"{key}: choice() needs at least one value")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        return _range_distribution(key, text, value)
    if isinstance(value, IntervalSweep):
        return _interval_distribution(key, text, value)
    raise SearchSpaceError(f"{key}: {text} is not a sweep")


def build(
    params: dict[str, Any], arguments: list[str]
) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Search space and fixed overrides from the sweeper's `params` and the command line.

    Command-line sweeps (`x=1,2,3`, `x=interval(0,1)`) join the search space and override a
    `params` entry of the same key; plain `key=value` arguments are passed to every trial.
    """
    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    try:
        overrides = parser.parse_overrides(lines) + parser.parse_overrides(arguments)
    except Exception as err:  # Hydra's grammar errors: say which entry
        raise SearchSpaceError(f"Cannot parse the search space: {err}") from None
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = to_distribution(override)
            fixed.pop(key, None)
        else:
            fixed[key] = override.input_line
            space.pop(key, None)
    return space, list(fixed.values())


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """Every value of each entry, for a grid search: choice and range entries only."""
    values = {}
    for key, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            values[key] = list(distribution.choices)
        elif getattr(distribution, "step", None) is not None and not distribution.log:
            count = round((distribution.high - distribution.low) / distribution.step) + 1
            values[key] = [distribution.low + i * distribution.step for i in range(count)]
        else:
            raise SearchSpaceError(
                f"{key}: a grid search needs choice(...) or range(...) values; an interval "
                "has no grid. Use the tpe or random sampler, or list the values with choice()."
            )
    return values


def format_value(value: Any) -> str:
    """A sampled value as a Hydra override value."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def describe(distribution: BaseDistribution) -> str:
    """A distribution in a few words, for the sweep's first log line."""
    shown = {k: v for k, v in distribution.__dict__.items() if v is not None and v is not False}
    return type(distribution).__name__.replace("Distribution", "").lower() + str(shown)


def custom_space_function(path: str | None):
    """`hydra.sweeper.custom_search_space`: the function (cfg, trial) -> None it names."""
    if not path:
        return None
    try:
        return get_method(path)
    except Exception as err:
        raise SweepError(
            f"hydra.sweeper.custom_search_space={path}: cannot import "
            f"it ({type(err).__name__}: {err}). Give the dotted path of a function "
            "(cfg, trial) -> None."
        ) from None
