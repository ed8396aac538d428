"""A YAML syntax error in a config file, told in one line: the file, the line, the column
and the problem. Hydra reports it with the parser's whole traceback (about 90 lines), so
the command checks its config folders' files before Hydra reads them: a few
milliseconds."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from experiment.errors import ConfigError

# libyaml's parser where installed: the same errors, faster.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def error_line(err: yaml.YAMLError, path: Path | str | None = None) -> str:
    """`err` as one line: 'YAML error in FILE, line L, column C: PROBLEM'."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    where = str(path or (mark.name if mark is not None else "a config file"))
    if mark is not None:
        where += f", line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return f"YAML error in {where}: {f'{context}: ' if context else ''}{problem}"


def check_folders(folders: Iterable[Path | str]) -> None:
    """Raise ConfigError (one line) for the first config file under `folders` that is
    not valid YAML."""
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                for _ in yaml.compose_all(path.read_text(encoding="utf-8"), Loader=_LOADER):
                    pass
            except yaml.YAMLError as err:
                raise ConfigError(error_line(err, path)) from None


def config_dirs_of(argv: list[str]) -> list[Path]:
    """The folders a command line adds with `--config-dir DIR` (`-cd`, `--config-dir=DIR`)."""
    found = []
    for index, argument in enumerate(argv):
        if argument.startswith("--config-dir="):
            found.append(Path(argument.split("=", 1)[1]))
        elif argument in ("--config-dir", "-cd") and index + 1 < len(argv):
            found.append(Path(argv[index + 1]))
    return [folder for folder in found if folder.is_dir()]
