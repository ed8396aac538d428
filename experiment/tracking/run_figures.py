"""A finished run's figures: its learning curves and its task's test figure, drawn and
logged under the run's `plots/` artifact folder by the run itself, before it ends."""

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
