"""Allowed values, declared on the schema's fields and checked from those declarations.

A field states what it allows where it is defined (`lr: float = allowed(1e-3, POSITIVE)`);
`check_fields` walks the typed config and refuses the first value outside what its field
allows, with one message naming the key, the value and what is allowed. A field whose
type admits None allows null as well, and says so. Every rule refuses NaN and infinity.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from experiment.errors import ConfigValueError

RULE = "allowed"  # the metadata key of a field's rule


@dataclass(frozen=True)
class Rule:
    accepts: Callable[[Any], bool]
    text: str  # what is allowed, as the message says it

    def __call__(self, value) -> bool:
        try:
            return bool(self.accepts(value))
        except TypeError:  # e.g. a list where a number belongs
            return False


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(low: float | None = None, high: float | None = None, *, low_open=False, high_open=False):
    """A predicate for a finite number in the interval given by its bounds."""

    def accepts(v) -> bool:
        if not _finite(v):
            return False
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    return accepts


def each(element: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A non-empty list whose every entry passes `element`."""
    return lambda v: isinstance(v, Sequence) and len(v) > 0 and all(element(x) for x in v)


POSITIVE_FINITE = Rule(number(0, low_open=True), "a finite number > 0")
POSITIVE = Rule(number(0, low_open=True), "a number > 0")
NON_NEGATIVE = Rule(number(0), "a number >= 0")
SECONDS = Rule(number(0, low_open=True), "a number of seconds > 0")
UNIT_OPEN_RIGHT = Rule(number(0, 1, high_open=True), "a number in [0, 1)")
UNIT_OPEN = Rule(number(0, 1, low_open=True, high_open=True), "a number strictly between 0 and 1")
UNIT_OPEN_LEFT = Rule(number(0, 1, low_open=True), "a number in (0, 1]")
AT_LEAST_ONE = Rule(number(1), "an integer >= 1")
AT_LEAST_TWO = Rule(number(2), "an integer >= 2")
NON_NEGATIVE_INT = Rule(number(0), "an integer >= 0")
SIZES = Rule(each(number(1)), "a non-empty list of integers >= 1")
POSITIVE_LIST = Rule(each(number(0, low_open=True)), "a list of numbers > 0")
FINITE_LIST = Rule(each(number()), "a list of finite numbers")
AREA_SHARE = Rule(
    lambda v: len(v) == 2 and number(0, 1, low_open=True)(v[0]) and v[0] <= v[1] <= 1,
    "[min, max] with 0 < min <= max <= 1",
)


def allowed(default: Any = dataclasses.MISSING, rule: Rule | None = None, *, factory=None):
    """A dataclass field with `default` (or `factory`) that allows what `rule` allows."""
    metadata = {RULE: rule} if rule is not None else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _nullable(field: dataclasses.Field) -> bool:
    return "None" in str(field.type) or "Optional" in str(field.type)


def check_fields(node: Any, prefix: str) -> None:
    """Raise ConfigValueError for the first field of `node` (a schema dataclass, nested
    ones included) whose value its rule refuses; `prefix` is the node's key."""
    if not dataclasses.is_dataclass(node):
        return
    fields = dataclasses.fields(node)
    for field in fields:
        value = getattr(node, field.name)
        rule = field.metadata.get(RULE)
        if rule is not None and value is not None and not rule(value):
            text = f"null or {rule.text}" if _nullable(field) else rule.text
            raise ConfigValueError(f"{prefix}.{field.name}", value, text)
    # Nested nodes after the node's own keys: an inner key that interpolates an outer one
    # (dataset.source.cache_max_gb: ${..cache_max_gb}) is reported by the key a user sets.
    for field in fields:
        check_fields(getattr(node, field.name), f"{prefix}.{field.name}")
