"""A finished run's figures as one job: its learning curves and its task's test figure,
drawn and logged under the run's `plots/` artifact folder.

The run's own process does the job at its end; in a sweep whose trials run in worker
processes, the trial may hand it (pickled) to the sweep's figure process, which draws it
while the worker starts its next trial (sweep_context.defer_figures, the sweeper's
figures.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunFigures:
    tracking_uri: str
    run_id: str
    history: list[dict[str, float]]
    metric: str  # what the learning curves show beside the loss
    draw_test: Callable[[Path], Path | None]  # draws the task's test figure into a folder

    def log(self) -> None:
        import mlflow

        from experiment.tracking import plots

        with tempfile.TemporaryDirectory() as folder:
            plots.learning_curves(self.history, Path(folder) / "learning_curves.png", self.metric)
            self.draw_test(Path(folder))
            mlflow.MlflowClient(self.tracking_uri).log_artifacts(self.run_id, folder, "plots")
