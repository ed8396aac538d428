"""Who writes a checkpoint folder: `run.lock`, held for the whole run.

The file says which run the folder belongs to (its config fingerprint and MLflow run id,
known before the first checkpoint) and which process writes it (pid and host). The
writing process holds an exclusive `flock` on it from before its MLflow run starts to its
end; the kernel drops the lock when that process dies however it dies, so a lock that
cannot be taken means a live writer. That is what lets `trainer.resume=auto`:

- continue a run killed before its first checkpoint, or whose checkpoints are all
  damaged, in its own MLflow run (the fingerprint and run id are here, not only in the
  checkpoints);
- refuse to take over a folder whose writer is still running (two processes writing one
  MLflow run), naming that process.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from experiment.errors import ConfigError

LOCK = "run.lock"


@dataclass(frozen=True)
class Owner:
    """What `run.lock` says of the run writing its folder."""

    fingerprint: str
    pid: int
    host: str
    mlflow_run_id: str | None = None

    def describe(self) -> str:
        run = f" (MLflow run {self.mlflow_run_id})" if self.mlflow_run_id else ""
        return f"process {self.pid} on {self.host}{run}"


class FolderInUse(ConfigError):
    """A run's checkpoint folder is being written by a live process."""

    def __init__(self, folder: Path, owner: Owner | None):
        who = owner.describe() if owner else "another process"
        super().__init__(
            f"The checkpoint folder {folder} is being written by {who}, which is still "
            "running: two processes would write one run. Wait for it to end or stop it "
            "(a stopped run is continued by trainer.resume=auto), or give this run another "
            "trainer.checkpoint_dir."
        )


def read_owner(folder: Path) -> Owner | None:
    """What the folder's `run.lock` says, or None (no file, or one cut short by a crash)."""
    try:
        data = json.loads((Path(folder) / LOCK).read_text())
        return Owner(**data)
    except (OSError, ValueError, TypeError):
        return None


def live_owner(folder: Path) -> Owner | None:
    """The owner of a folder whose writer is alive (its lock is held), else None."""
    path = Path(folder) / LOCK
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_owner(folder) or Owner("", 0, "?")
    else:
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


class RunLock:
    """The lock a run holds on its checkpoint folder (`hold`), with what it records."""

    def __init__(self, folder: Path, fingerprint: str):
        self.folder, self.fingerprint = Path(folder), fingerprint
        self.descriptor: int | None = None

    def hold(self, take_over: bool = False) -> RunLock:
        """Take the lock, or FolderInUse naming the live writer. A sweep's retry of a
        lost trial (`take_over`) takes the folder whatever holds it: the sweep
        has ended the lost attempt's process, or cannot reach it (another machine)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not take_over:
                os.close(descriptor)
                raise FolderInUse(self.folder, read_owner(self.folder)) from None
        self.descriptor = descriptor
        self.record(None)
        return self

    def record(self, mlflow_run_id: str | None) -> None:
        """Write who holds the folder and for which run: in place (a new file would be a
        new inode, not the one locked), flushed to disk."""
        if self.descriptor is None:
            return
        owner = Owner(self.fingerprint, os.getpid(), socket.gethostname(), mlflow_run_id)
        data = json.dumps(asdict(owner)).encode()
        os.ftruncate(self.descriptor, 0)
        os.pwrite(self.descriptor, data, 0)
        with contextlib.suppress(OSError):  # a filesystem without fsync: still recorded
            os.fsync(self.descriptor)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing drops the flock
            self.descriptor = None
