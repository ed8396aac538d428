"""Standing rules of the codebase's shape: subpackages in layers without circles, the sweep
engine outside Hydra's scanned plugin namespace, the config enters once, typed; small
functions and classes; modules talk through public names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "experiment"
PLUGIN = ROOT / "hydra_plugins" / "experiment_optuna_sweeper"
SOURCES = sorted([*PACKAGE.rglob("*.py"), *PLUGIN.rglob("*.py")])

# The package's parts, lowest first: each may import only those before it (and itself).
# The top-level modules are the package's error vocabulary and its entry points.
LAYERS = [
    "errors",
    "system",  # files, signals, streams, secrets: how a command meets its OS
    "config",  # the schema and where the config enters
    "runtime",  # the device and the ranks of a distributed run
    "data",
    "models",
    "tracking",  # MLflow
    "sweep",  # the sweep engine, and a trial's view of it (sweep.context)
    "training",  # the loop, tasks, checkpoints, the run itself
    "serving",  # compare, promote, predict
    "api",
    "train",  # the command line
    "eval",
    "",  # experiment/__init__.py: `experiment.compose`, `experiment.run`
]


def _runtime_nodes(tree: ast.AST):
    """Every node, less the bodies of `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    found = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imported_modules(path: Path) -> set[str]:
    """The package's modules `path` imports, at its top or inside a function."""
    found = set()
    for module, names in _imports(ast.parse(path.read_text())):
        if module.split(".")[0] != "experiment":
            continue
        submodules = {f"{module}.{name}" for name in names} & MODULES.keys()
        found |= submodules or {module}
    # The package itself (its `__version__`) is imported before any of its modules anyway.
    return found - {"experiment"}


def _layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_no_part_of_the_package_imports_a_part_above_it():
    upward = [
        f"{module} imports {imported}"
        for module, path in MODULES.items()
        for imported in _imported_modules(path)
        if LAYERS.index(_layer(imported)) > LAYERS.index(_layer(module))
    ]
    assert not upward
    assert {_layer(module) for module in MODULES} == set(LAYERS)


def test_no_module_imports_itself_through_others():
    graph = {module: _imported_modules(path) - {module} for module, path in MODULES.items()}
    circles, done = [], set()

    def visit(module: str, trail: list[str]) -> None:
        if module in trail:
            circles.append(" -> ".join([*trail[trail.index(module) :], module]))
            return
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*trail, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not circles


def test_the_plugin_namespace_holds_only_what_hydra_discovers():
    """Hydra's plugin scan executes every module under hydra_plugins/ on every command: the
    face (the Sweeper class) and its ConfigStore entries, importing no engine (nor Optuna)
    at the top; the names a sweep and its runs agree on (sweep.protocol) are all they read."""
    assert sorted(p.name for p in PLUGIN.glob("*.py")) == ["__init__.py", "config.py", "sweeper.py"]
    for path in PLUGIN.glob("*.py"):
        top = ast.parse(path.read_text()).body
        imported = [
            m
            for node in top
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for m, _ in _imports(ast.Module(body=[node], type_ignores=[]))
        ]
        engine = [m for m in imported if m.split(".")[0] in ("experiment", "optuna")]
        assert set(engine) <= {"experiment.sweep.protocol"}, path


def test_only_the_config_subpackage_reads_omegaconf():
    """The config enters once, typed (config/); below that no code reads a DictConfig. The
    sweep engine works on Hydra's own configs (the sweep's, each trial's) and is apart."""
    readers = [
        _module_name(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if any(m.split(".")[0] == "omegaconf" for m, _ in _imports(ast.parse(path.read_text())))
        and _layer(_module_name(path)) != "sweep"
    ]
    assert readers and all(_layer(reader) == "config" for reader in readers), readers


def test_config_is_read_by_attribute_not_by_defensive_get():
    reads = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bcfg[\w.]*\.get\(", line)
    ]
    assert len(reads) <= 3, reads


def test_value_checks_live_on_the_schema_fields():
    """Cross-key rules stay one short table; a value's own range is its field's rule."""
    rules = PACKAGE / "config" / "rules.py"
    assert len(rules.read_text().splitlines()) <= 100


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


def test_modules_import_no_private_names_of_each_other():
    private = [
        f"{path.relative_to(ROOT)}: {module}.{name}"
        for path in SOURCES
        for module, names in _imports(ast.parse(path.read_text()))
        if module.split(".")[0] in ("experiment", "hydra_plugins")
        for name in names
        if name.startswith("_") and name != "__version__"
    ]
    assert not private
