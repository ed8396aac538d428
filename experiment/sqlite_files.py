"""SQLite databases created whole or not at all.

MLflow and Optuna create their tables and then migrate them in several steps. A process
killed in the middle (a sweep stopped seconds after it started) leaves a file that every
later run refuses ("table ... already exists"). Building a new database under a temporary
name and moving it into place when complete means a killed creation leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from experiment.durable import fsync_file, fsync_folder


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL; None for other URLs and in-memory databases."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(url[len(prefix) :]).expanduser()


def create_atomically(url: str, initialize: Callable[[str], None]) -> None:
    """If `url` names a SQLite file that does not exist yet, create it with
    `initialize(temporary_url)` and move it into place; otherwise do nothing."""
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.creating-{os.getpid()}")
    partial.unlink(missing_ok=True)
    try:
        initialize(f"sqlite:///{partial}")
        fsync_file(partial)  # its tables on disk before it is in place
        # link() fails if another process put its copy in place first: keep theirs.
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
        fsync_folder(path.parent)
    finally:
        partial.unlink(missing_ok=True)
