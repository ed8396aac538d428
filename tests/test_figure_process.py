"""The figure process of a sweep (figures.py): it logs the figures it is given into their
runs, and a figure process that was killed leaves its work to the sweep's process."""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from experiment.sweep.figures import FigureWriter
from experiment.tracking import plots
from experiment.tracking.run_figures import RunFigures
from experiment.tracking.tracker import Tracker


def draw_counts(folder: Path) -> Path:
    return plots.confusion_matrix(np.eye(3, dtype=int) * 5, ["a", "b", "c"], folder / "cm.png")


def finished_runs(tmp_path, count: int) -> tuple[str, list[bytes]]:
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "art"), "figures")
    history = [{"train/loss": 1.0, "val/loss": 1.1, "train/acc": 0.5, "val/acc": 0.4}] * 3
    pickled = []
    for index in range(count):
        tracker.start(run_name=f"r{index}", params={}, tags={}, texts={})
        pickled.append(
            pickle.dumps(RunFigures(tracker.uri, tracker.run_id, history, "acc", draw_counts))
        )
        tracker.finish("FINISHED")
    return tracker.uri, pickled


def logged(uri: str, pickled: list[bytes]) -> list[set[str]]:
    client = MlflowClient(uri)
    return [
        {a.path for a in client.list_artifacts(pickle.loads(p).run_id, "plots")} for p in pickled
    ]


def test_the_figure_process_logs_every_runs_figures_before_it_ends(tmp_path):
    uri, pickled = finished_runs(tmp_path, 3)
    writer = FigureWriter(mp.get_context("fork"))
    writer.submit(pickled[:2])
    writer.submit(pickled[2:])
    writer.drain()
    assert writer.process.exitcode == 0
    assert logged(uri, pickled) == [{"plots/learning_curves.png", "plots/cm.png"}] * 3


def test_a_killed_figure_process_leaves_the_figures_to_the_sweeps_process(tmp_path, caplog):
    uri, pickled = finished_runs(tmp_path, 2)
    writer = FigureWriter(mp.get_context("fork"))
    writer.process.kill()
    writer.process.join(timeout=30)
    with caplog.at_level(logging.WARNING):
        writer.submit(pickled)
        writer.drain()
    assert "The figure process ended" in caplog.text
    assert logged(uri, pickled) == [{"plots/learning_curves.png", "plots/cm.png"}] * 2
