"""SQLite databases created whole or not at all.

MLflow and Optuna create their tables and then migrate them in several steps. A process
killed in the middle (a sweep stopped seconds after it started) leaves a file that every
later run refuses ("table ... already exists"). Building a new database under a temporary
name and moving it into place when complete means a killed creation leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from experiment.system.durable import fsync_file, fsync_folder


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL; None for other URLs and in-memory databases."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(url[len(prefix) :]).expanduser()


def existing_file_problem(url: str, table: str) -> str | None:
    """What is wrong with the existing SQLite file of `url` as a database holding `table`
    (an Optuna storage's `studies`, an MLflow store's `experiments`): empty, not a SQLite
    file, damaged, or another program's database. None where it is fine or not there (a
    new one is created whole), and for other URLs. Such a file is never written to: a
    library would create its tables in it and carry on as if nothing had been there."""
    path = sqlite_path(url)
    if path is None or not path.exists():
        return None
    if path.is_dir():
        return "is a folder, not a database file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes): whatever it held is gone"
    try:
        reading = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=60)
        with contextlib.closing(reading) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master")}
            if table not in tables:
                kind = f"tables {', '.join(sorted(tables)[:5])}" if tables else "no tables"
                return f"is a SQLite database of something else ({kind}; no '{table}')"
            (verdict,) = db.execute("pragma quick_check(1)").fetchone()
            if verdict != "ok":
                return f"is damaged (SQLite: {verdict})"
    except sqlite3.OperationalError as err:
        if "locked" in str(err):  # busy writers for a minute: no verdict, the library's turn
            return None
        return f"cannot be read (SQLite: {err})"
    except sqlite3.DatabaseError as err:  # "file is not a database", "... is malformed"
        return f"is damaged or not a SQLite database (SQLite: {err})"
    return None


def create_atomically(
    url: str,
    initialize: Callable[[str], None],
    template: str | None = None,
    adapt: Callable[[Path], None] | None = None,
) -> None:
    """If `url` names a SQLite file that does not exist yet, create it with
    `initialize(temporary_url)` and move it into place; otherwise do nothing.

    With `template` (a name that changes whenever `initialize` would make another
    schema, e.g. its library's version), the first creation keeps a copy of the new
    database in the user's cache folder and later ones copy it: MLflow's migrations take
    over a second, a copy milliseconds. `adapt(path)` then fixes what is particular to
    this database (a copy was made elsewhere)."""
    path = sqlite_path(url)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.creating-{os.getpid()}")
    partial.unlink(missing_ok=True)
    try:
        if not (template and _copy_of_template(template, partial)):
            initialize(f"sqlite:///{partial}")
            if template:
                _keep_as_template(partial, template)
        if template and adapt is not None:
            adapt(partial)
        fsync_file(partial)  # its tables on disk before it is in place
        # link() fails if another process put its copy in place first: keep theirs.
        with contextlib.suppress(FileExistsError):
            os.link(partial, path)
        fsync_folder(path.parent)
    finally:
        partial.unlink(missing_ok=True)


def template_folder() -> Path:
    """Where new databases' templates are kept: $XDG_CACHE_HOME/experiment/sqlite (by
    default ~/.cache/experiment/sqlite)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "experiment" / "sqlite"


def _copy_of_template(name: str, destination: Path) -> bool:
    """Copy the template `name` to `destination`; False if there is none (or it cannot
    be read: the caller then creates the database itself)."""
    source = template_folder() / f"{name}.db"
    try:
        shutil.copyfile(source, destination)
        return True
    except OSError:
        destination.unlink(missing_ok=True)
        return False


def _keep_as_template(database: Path, name: str) -> None:
    """Keep a copy of a newly made `database` as the template `name`: written whole
    under a temporary name, then linked in place (the first process to finish wins).
    An unwritable cache costs only the speed-up."""
    folder = template_folder()
    partial = folder / f".{name}.{os.getpid()}.db"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(database, partial)
        fsync_file(partial)
        with contextlib.suppress(FileExistsError):
            os.link(partial, folder / f"{name}.db")
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
