"""A Hydra callback: the run's (or sweep's) output folder must be writable before Hydra
creates it, so an unwritable `hydra.run.dir` is one line and exit 2, not Hydra's
traceback."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from experiment.errors import ConfigValueError
from experiment.system.durable import writable_folder_problem


class OutputFolderCheck(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def _check(folder: str, key: str) -> None:
        # Not created here: Hydra names a run folder by the time (${now:}) when it makes it.
        problem = writable_folder_problem(Path(folder), create=False)
        if problem is not None:
            error = ConfigValueError(
                key, str(folder), f"a folder this process can write ({problem})"
            )
            print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
            raise SystemExit(error.exit_code)
