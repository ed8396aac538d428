"""A lock that every sweep process sharing one study takes around the steps that must not
interleave: counting the trials against `n_trials` and asking for the next one, recovering
trials of killed processes, finding or creating the study's MLflow parent run.

Without it two processes that count at the same instant both see room for one more trial
and the study overshoots `n_trials`. The lock lives in the study's own database, so it
holds across machines: a PostgreSQL advisory lock, or for SQLite (one machine) a file lock
next to the database file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from experiment.errors import SweepError

log = logging.getLogger(__name__)
# The steps under the lock take seconds; minutes of waiting mean a stuck holder.
LOCK_TIMEOUT_S = 600.0


def _lock_key(study_name: str) -> int:
    """A signed 64-bit key (what pg_advisory_lock takes) derived from the study name."""
    digest = hashlib.sha1(f"experiment-sweep:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StudyLock:
    """`with lock:` holds the study's lock; re-entrant within one process."""

    def __init__(self, storage_url: str | None, study_name: str, engine=None):
        self.storage_url, self.study_name, self.engine = storage_url, study_name, engine
        self._depth = 0
        self._release = None

    @contextlib.contextmanager
    def _acquire(self) -> Iterator[None]:
        url = self.storage_url or ""
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :]).expanduser()
            lock = FileLock(path.with_name(path.name + ".lock"), timeout=LOCK_TIMEOUT_S)
            try:
                lock.acquire()
            except Timeout:
                raise SweepError(
                    f"Waited {LOCK_TIMEOUT_S:.0f} s for the lock of study '{self.study_name}' "
                    f"({lock.lock_file}), which another sweep process holds. If none runs, "
                    "delete that file and run again."
                ) from None
            try:
                yield
            finally:
                lock.release()
        elif url.startswith("postgresql") and self.engine is not None:
            from sqlalchemy import text

            key = _lock_key(self.study_name)
            with self.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
        else:  # in memory: one process; other databases: no portable lock
            yield

    def __enter__(self) -> StudyLock:
        if self._depth == 0:
            self._release = self._acquire()
            self._release.__enter__()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            release, self._release = self._release, None
            release.__exit__(*exc)
