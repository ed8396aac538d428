"""Files that a later run depends on, written so that a power cut cannot leave them empty.

A rename alone is not enough: after a crash on ext4 or XFS the renamed file can be there
with no data in it. Each file is written under a temporary name in its own folder,
flushed and fsync'd, renamed into place, and the folder fsync'd so the rename itself is
on disk. A write that fails (a full disk) removes its temporary file and leaves the
previous version whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a file renamed into it) durable."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def replacing_file(path: Path) -> Iterator[Path]:
    """`with replacing_file(path) as temporary:` write the new content to the file
    `temporary` (by a writer that takes a path, as torch.save does); on leaving the block
    it is durable at `path`, or, if the block raised, `path` is as it was. A failure on a
    filesystem left without room is raised as OSError(ENOSPC), whatever the writer raised
    (torch.save's C++ writer reports a short write as a RuntimeError)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.writing-{os.getpid()}")
    try:
        yield temporary
        fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException as err:
        full = isinstance(err, OSError | RuntimeError) and _no_room(path.parent)
        with contextlib.suppress(OSError):
            temporary.unlink()
        if full and not (isinstance(err, OSError) and err.errno == errno.ENOSPC):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path.parent)) from err
        raise
    fsync_folder(path.parent)


@contextlib.contextmanager
def replacing(path: Path, mode: str = "wb") -> Iterator[IO]:
    """`with replacing(path) as handle:` as `replacing_file`, through an open handle."""
    with replacing_file(path) as temporary, open(temporary, mode) as handle:
        yield handle


def _no_room(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the filesystem of `folder` has (almost) no space left, or no inodes."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < margin or (stats.f_files and not stats.f_favail)


def fsync_files(folder: Path) -> None:
    """fsync every file in `folder` and the folder itself (before the folder is renamed
    into place whole)."""
    for path in Path(folder).iterdir():
        if path.is_file():
            fsync_file(path)
    fsync_folder(folder)


def writable_folder_problem(folder: Path, create: bool = True) -> str | None:
    """None if `folder` can be created (if missing) and written by this process, else why
    not; checked before a run trains, so no epoch is lost to an unwritable folder. With
    `create=False` nothing is made: the nearest existing ancestor must be a writable
    folder (for a folder whose name another process settles later)."""
    if not create:
        existing = Path(folder).expanduser().absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{existing} is not writable by this process"
        return None
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = Path(folder) / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        return f"{err.strerror or err}: {err.filename or folder}"
    return None


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path, "wb") as handle:
        handle.write(data)


def write_text(path: Path, text: str) -> None:
    with replacing(path, "w") as handle:
        handle.write(text)


def is_disk_full(err: BaseException) -> bool:
    """Whether a write failed for lack of space (or of quota)."""
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
