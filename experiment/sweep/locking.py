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
from experiment.sweep.patience import transient

log = logging.getLogger(__name__)
# The steps under the lock take seconds; minutes of waiting mean a stuck holder.
LOCK_TIMEOUT_S = 600.0


def _lock_key(study_name: str) -> int:
    """A signed 64-bit key (what pg_advisory_lock takes) derived from the study name."""
    digest = hashlib.sha1(f"experiment-sweep:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StudyLock:
    """`with lock:` holds the study's lock; re-entrant within one process."""

    def __init__(self, storage_url: str | None, study_name: str, engine=None, patience=None):
        """`patience`: the storage's `Patience`, which waits out an outage of the database
        that holds the lock."""
        self.storage_url, self.study_name, self.engine = storage_url, study_name, engine
        self.patience = patience
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
            locking = self.patience.call if self.patience else (lambda f, *a: f(*a))
            connection = locking(self._advisory_lock, key)
            try:
                yield
            finally:
                try:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
                except Exception as err:  # a lost session took its lock with it
                    if not transient(err):
                        raise
                finally:
                    connection.close()
        else:  # in memory: one process; other databases: no portable lock
            yield

    def _advisory_lock(self, key: int):
        """A connection holding the study's PostgreSQL advisory lock."""
        from sqlalchemy import text

        connection = self.engine.connect()
        try:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
        except BaseException:
            connection.close()
            raise
        return connection

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
