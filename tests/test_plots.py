"""A figure kept from a process's previous run draws the next run's PNG exactly as a new
figure does: nothing of the previous run (its values, limits, cells, title) shows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from experiment.tracking import plots


def history(epochs: int, scale: float, metric: str = "acc") -> list[dict[str, float]]:
    return [
        {
            "train/loss": scale / (e + 1),
            "val/loss": 1.3 * scale / (e + 1),
            f"train/{metric}": 1 - 0.5 / (e + 1),
            f"val/{metric}": 1 - 0.6 / (e + 1),
        }
        for e in range(epochs)
    ]


def curves_cover(values: list[dict[str, float]], metric: str = "acc") -> None:
    """The kept figure's axes show all of this run's values and epochs."""
    _, axes, _ = plots._kept["curves", metric]
    for ax, name in zip(axes, ("loss", metric), strict=True):
        shown = [h[f"{s}/{name}"] for h in values for s in ("train", "val")]
        shown = [v for v in shown if not math.isnan(v)]
        low, high = ax.get_ylim()
        assert low <= min(shown) and max(shown) <= high, (name, ax.get_ylim())
        assert ax.get_xlim()[0] <= 1 and len(values) <= ax.get_xlim()[1]


def drawn_new(draw, path):
    plots.forget_figures()
    return draw(path).read_bytes()


@pytest.fixture(autouse=True)
def no_kept_figures():
    plots.forget_figures()
    yield
    plots.forget_figures()


def test_learning_curves_of_the_next_run_are_as_from_a_new_figure(tmp_path):
    diverged = history(6, 2.0)
    diverged[-1]["train/loss"] = math.nan
    runs = [history(10, 1.0), history(3, 40.0), diverged, history(25, 0.01)]
    for earlier, later in zip(runs, runs[1:], strict=False):
        plots.learning_curves(earlier, tmp_path / "earlier.png")
        kept = plots.learning_curves(later, tmp_path / "kept.png").read_bytes()
        curves_cover(later)
        new = drawn_new(lambda p, h=later: plots.learning_curves(h, p), tmp_path / "new.png")
        assert kept == new
    # Another metric is another figure (its axis is named after it), kept beside the first.
    r2 = history(4, 1.0, "r2")
    kept = plots.learning_curves(r2, tmp_path / "r2.png", "r2").read_bytes()
    assert len(plots._kept) == 2
    assert kept == drawn_new(lambda p: plots.learning_curves(r2, p, "r2"), tmp_path / "n.png")


def test_a_confusion_matrix_of_the_next_run_is_as_from_a_new_figure(tmp_path):
    rng = np.random.default_rng(0)
    classes = [str(i) for i in range(10)]
    full = rng.integers(0, 9, (10, 10)) + np.diag(np.full(10, 40))
    diagonal = np.diag(np.arange(1, 11))  # most cells empty: blank
    few = np.zeros((10, 10), dtype=int)
    few[3, 5] = 2
    for earlier, later in ((full, diagonal), (diagonal, few), (few, full)):
        plots.confusion_matrix(earlier, classes, tmp_path / "earlier.png")
        kept = plots.confusion_matrix(later, classes, tmp_path / "kept.png").read_bytes()
        _, ax, image, cells = plots._kept["confusion", tuple(classes)]
        assert (image.norm.vmin, image.norm.vmax) == (later.min(), later.max())
        shown = {(i, j): c.get_text() for i, r in enumerate(cells) for j, c in enumerate(r)}
        shown = {
            cell: text for cell, text in shown.items() if cells[cell[0]][cell[1]].get_visible()
        }
        assert shown == {(i, j): str(later[i, j]) for i, j in zip(*np.nonzero(later), strict=True)}
        assert f"acc {np.trace(later) / later.sum():.4f}" in ax.get_title()
        new = drawn_new(
            lambda p, m=later: plots.confusion_matrix(m, classes, p), tmp_path / "new.png"
        )
        assert kept == new
    # The cells differ between the matrices: the kept figure's PNGs are not all one image.
    images = [
        np.asarray(Image.open(plots.confusion_matrix(m, classes, tmp_path / f"{i}.png")))
        for i, m in enumerate((full, few))
    ]
    assert (images[0] != images[1]).any()


def test_other_classes_get_a_figure_of_their_own(tmp_path):
    matrix = np.array([[3, 1], [0, 4]])
    plots.confusion_matrix(matrix, ["cat", "dog"], tmp_path / "a.png")
    kept = plots.confusion_matrix(matrix, ["ant", "bee"], tmp_path / "b.png").read_bytes()
    assert kept == drawn_new(
        lambda p: plots.confusion_matrix(matrix, ["ant", "bee"], p), tmp_path / "c.png"
    )
    for n in range(plots.KEEP_AT_MOST + 2):  # a bounded number of figures is kept
        names = [str(i) for i in range(n + 1)]
        plots.confusion_matrix(np.eye(n + 1, dtype=int), names, tmp_path / "x.png")
    assert len(plots._kept) == plots.KEEP_AT_MOST


def test_titles_sit_where_matplotlibs_automatic_placement_puts_them(tmp_path, monkeypatch):
    """The titles' fixed height spares the automatic placement's measuring, not a pixel."""
    points = np.array([[1.0, 1.2], [2.0, 1.9], [3.5, 3.0]])
    figures = {
        "curves": lambda p: plots.learning_curves(history(10, 1.0), p),
        "confusion": lambda p: plots.confusion_matrix(np.diag([4, 5]), ["a", "b"], p),
        "regression": lambda p: plots.predicted_vs_true(points, p),
    }
    fixed = {name: drawn_new(draw, tmp_path / f"{name}.png") for name, draw in figures.items()}
    monkeypatch.setattr(plots, "_title", lambda ax, text: ax.set_title(text))
    for name, draw in figures.items():
        assert drawn_new(draw, tmp_path / f"auto-{name}.png") == fixed[name], name
