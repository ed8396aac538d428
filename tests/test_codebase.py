"""Standing rules of the codebase's shape: the config enters once, typed; small functions
and classes; the sweeper plugin's modules talk through public names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "experiment"
PLUGIN = ROOT / "hydra_plugins" / "experiment_optuna_sweeper"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *PLUGIN.rglob("*.py")])


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_at_most_three_modules_of_the_package_read_omegaconf():
    readers = [
        path.name
        for path in sorted(PACKAGE.glob("*.py"))
        if any(m.split(".")[0] == "omegaconf" for m, _ in _imports(ast.parse(path.read_text())))
    ]
    assert len(readers) <= 3, readers  # the schema, the config's entry, the Python API


def test_config_is_read_by_attribute_not_by_defensive_get():
    reads = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bcfg[\w.]*\.get\(", line)
    ]
    assert len(reads) <= 3, reads


def test_value_checks_live_on_the_schema_fields():
    rules = PACKAGE / "rules.py"
    assert not rules.exists() or len(rules.read_text().splitlines()) <= 80


@pytest.mark.parametrize(
    "kind,limit", [((ast.FunctionDef, ast.AsyncFunctionDef), 60), ((ast.ClassDef,), 250)]
)
def test_functions_and_classes_stay_small(kind, limit):
    too_long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)"
        for path in SOURCES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, kind) and (size := node.end_lineno - node.lineno + 1) > limit
    ]
    assert not too_long


def test_plugin_modules_import_no_private_names_of_each_other():
    private = [
        f"{path.name}: {module}.{name}"
        for path in sorted(PLUGIN.glob("*.py"))
        for module, names in _imports(ast.parse(path.read_text()))
        if module.startswith("hydra_plugins.")
        for name in names
        if name.startswith("_")
    ]
    assert not private
