"""The configuration reference, generated from the schema: every key of every group's
options (and of the sweeper) with its type, default, allowed values and the comment the
schema gives it. `python -m experiment.config.reference > docs/reference/configuration.md`
writes the docs page; a test fails when the page is out of date."""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import sys
from collections.abc import Iterator
from typing import Any

from omegaconf import MISSING

from experiment.config import schema
from experiment.config.allowed import RULE

PREAMBLE = """# Configuration reference

Generated from the schema (`experiment/config/schema.py`) by
`python -m experiment.config.reference`; a test fails when this page is out of date.
Each option file under `conf/` states only what it changes; the defaults below are the
schema's. Set any key on the command line (`trainer.epochs=5`) or in your own option
files. A key the schema does not know, or a value of the wrong type, is refused before the
run starts; so is a value outside what the key allows.
"""


@functools.cache  # a class's source is read once, not once per field
def _comments(cls: type) -> dict[str, str]:
    """The comment of each field of `cls` as its source writes it: the lines right above
    the field, then the comment at its end."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    body = ast.parse("".join(lines)).body[0]
    for statement in getattr(body, "body", []):
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        above, number = [], statement.lineno - 2
        while number >= 0 and lines[number].strip().startswith("#"):
            above.insert(0, lines[number].strip().lstrip("#").strip())
            number -= 1
        last = lines[statement.end_lineno - 1]
        inline = last.split("  # ", 1)[1].strip() if "  # " in last else ""
        found[statement.target.id] = " ".join([*above, inline]).strip()
    return found


def _comment(cls: type, name: str) -> str:
    for owner in cls.__mro__:
        if name in getattr(owner, "__annotations__", {}):
            return _comments(owner).get(name, "")
    return ""


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return MISSING


def _text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return f"`{value.value}`"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value == MISSING:
        return "required"
    return f"`{value}`"


def _allowed(field: dataclasses.Field, kind: Any) -> str:
    rule = field.metadata.get(RULE)
    if rule is not None:
        return rule.text
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return " | ".join(f"`{member.value}`" for member in kind)
    return ""


def _type_text(field: dataclasses.Field) -> str:
    kind = field.type
    return kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")


def rows(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str, str, str]]:
    """(key, type, default, allowed, description) for every leaf of `cls`, nested nodes
    by their dotted keys."""
    hints = _resolved_types(cls)
    for field in dataclasses.fields(cls):
        if field.name == "defaults":
            continue
        key, kind, default = f"{prefix}{field.name}", hints.get(field.name), _default(field)
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            yield from rows(type(default), f"{key}.")
            continue
        yield (
            key,
            _type_text(field),
            _text(default),
            _allowed(field, kind),
            _comment(cls, field.name),
        )


def _resolved_types(cls: type) -> dict[str, Any]:
    module = sys.modules[cls.__module__]
    found = {}
    for field in dataclasses.fields(cls):
        try:
            found[field.name] = eval(field.type, vars(module))  # the schema's own names
        except Exception:  # a union or a typing form: described by its text
            found[field.name] = None
    return found


def _cell(text: str) -> str:
    """Text that stays inside its table cell (a `|` would end it)."""
    return text.replace("\\|", "|").replace("|", "\\|").replace("\n", " ")


def table(cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> str:
    lines = ["| key | type | default | allowed | what it does |", "| --- | --- | --- | --- | --- |"]
    for key, kind, default, allowed, comment in rows(cls, prefix):
        if key in skip:
            continue
        cells = [f"`{key}`", kind, default, allowed, comment]  # a type's `|` must stay text
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def page() -> str:
    from hydra_plugins.experiment_optuna_sweeper.config import (
        SAMPLER_OPTIONS,
        ExperimentOptunaSweeperConf,
    )

    groups = tuple(schema.SCHEMAS)  # each has its section below
    parts = [PREAMBLE, "## The run's own keys\n", table(schema.Config, skip=groups)]
    for group, options in schema.SCHEMAS.items():
        parts.append(f"## `{group}`\n")
        for name, cls in options.items():
            parts.append(f"### {name} (`{cls.__name__}`)\n")
            described = cls.__dict__.get("__doc__") or ""
            if described and not described.startswith(f"{cls.__name__}("):  # not generated
                parts.append(inspect.cleandoc(described) + "\n")
            parts.append(table(cls, f"{group}."))
    parts.append("## The sweeper (`hydra/sweeper=experiment_optuna`)\n")
    parts.append(table(ExperimentOptunaSweeperConf, "hydra.sweeper."))
    parts.append("### Samplers (`hydra/sweeper/sampler=NAME`)\n")
    for name, cls in SAMPLER_OPTIONS.items():
        parts.append(f"#### {name} (`{cls.__name__}`)\n")
        parts.append(table(cls, "hydra.sweeper.sampler."))
    return "\n\n".join(part.strip() for part in parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(page())
