"""A Hydra callback: the run's (or sweep's) output folder must be writable before Hydra
creates it, so an unwritable `hydra.run.dir` is one line and exit 2, not Hydra's
traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from experiment.errors import ConfigValueError


def folder_problem(folder: Path) -> str | None:
    """Why `folder` could not be created and written (None if it could), found without
    creating it: its nearest existing ancestor must be a writable folder."""
    existing = Path(folder).expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this process"
    return None


class OutputFolderCheck(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        problem = folder_problem(Path(folder))
        if problem is not None:
            error = ConfigValueError(
                key, str(folder), f"a folder this process can write ({problem})"
            )
            print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(error.exit_code)
