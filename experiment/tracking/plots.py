"""Per-run figures logged to MLflow as PNG: learning curves, and the task's test figure
(a classification's confusion matrix, a regression's predicted-against-true values).

Drawn on matplotlib's Agg canvas, so they render without a display and show in the
MLflow UI without a network.

A process keeps the learning curves' and the confusion matrix's figure for its next run
of the same shape (the same metric; the same classes) and only puts the new data in:
a sweep's worker draws the same two figures for every trial, and building a figure's
axes and ticks, then laying out the same texts again, is over a third of its time. The
PNG is the same as from a new figure (tests/test_plots.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

KEEP_AT_MOST = 4  # figures kept per process: a sweep draws two shapes
_kept: dict[tuple, tuple] = {}


def _kept_figure(key: tuple, build: Callable[[], tuple]) -> tuple:
    """The figure of `key` (with its artists), built by `build()` the first time."""
    figure = _kept.pop(key, None) or build()
    _kept[key] = figure  # the most recently used last
    while len(_kept) > KEEP_AT_MOST:
        _kept.pop(next(iter(_kept)))
    return figure


def forget_figures() -> None:
    _kept.clear()


def _figure(width: float, height: float):
    # A bare Figure (no pyplot): nothing global to register or close, and a bit faster.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _margins(fig, left: float, bottom: float, right: float = 0.25, top: float = 0.45) -> None:
    """Fixed margins in inches, where tight_layout would measure every text with an extra
    draw (a third of a figure's time)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height
    )


def _title(ax, text: str) -> None:
    # At the axes' top edge, where matplotlib's automatic placement puts it when no tick
    # labels are above the axes (none are here); the automatic one measures the axes'
    # texts on every draw, a tenth of a figure's time.
    ax.set_title(text, y=1.0)


def _save(fig, path: Path) -> Path:
    # Fast zlib level: these PNGs are small, and encoding at the default level is a third
    # of the time a plot takes.
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
    return path


def warm_up() -> None:
    """Draw one small figure with text and throw it away: the first figure of a process
    loads the fonts and the canvas (~0.4 s), which a sweep's worker does before its first
    trial."""
    fig = _figure(1, 1)
    fig.add_subplot().set_title("warm-up")
    fig.savefig(io.BytesIO(), format="png", dpi=20)


def _curves_figure(metric: str) -> tuple:
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    lines = {}
    for ax, name in zip(axes, ("loss", metric), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            (lines[name, split],) = ax.plot([], [], style, label=split)
        ax.set(xlabel="epoch", ylabel=name)
        _title(ax, name)
        ax.grid(alpha=0.3)
        ax.legend()
    _margins(fig, left=0.8, bottom=0.6)
    fig.subplots_adjust(wspace=0.25)
    return fig, axes, lines


def learning_curves(history: list[dict[str, float]], path: Path, metric: str = "acc") -> Path:
    """Loss and the task's `metric` per epoch, train and validation, side by side."""
    fig, axes, lines = _kept_figure(("curves", metric), lambda: _curves_figure(metric))
    epochs = np.arange(1, len(history) + 1)
    for (name, split), line in lines.items():
        line.set_data(epochs, [h[f"{split}/{name}"] for h in history])
    for ax in axes:  # the limits and ticks of this run's values
        ax.relim()
        ax.autoscale_view()
    return _save(fig, path)


def _confusion_figure(classes: tuple[str, ...]) -> tuple:
    n = len(classes)
    size = max(4.5, 0.45 * n + 2)
    fig = _figure(size, size)
    ax = fig.add_subplot()
    image = ax.imshow(np.zeros((n, n)), cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true")
    _title(ax, " ")
    cells = []
    if n <= 20:  # numbers stay readable
        cells = [
            [ax.text(j, i, "", ha="center", va="center", fontsize=8) for j in range(n)]
            for i in range(n)
        ]
    label = 0.075 * max((len(str(c)) for c in classes), default=1)  # inches at 10 pt
    _margins(fig, left=0.6 + label, bottom=0.6 + (0.71 * label if n > 6 else 0.15))
    return fig, ax, image, cells


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts of (true class, predicted class) on the test split, with class names (a
    cell no sample fell in is left blank)."""
    key = tuple(classes)
    fig, ax, image, cells = _kept_figure(("confusion", key), lambda: _confusion_figure(key))
    image.set_data(matrix)
    image.autoscale()  # the colours span this matrix's counts, as a new imshow's would
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    _title(ax, f"test confusion matrix (acc {accuracy:.4f})")
    threshold = matrix.max() / 2
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            count = int(matrix[i, j])
            cell.set_visible(count != 0)  # empty cells stay blank, so the errors stand out
            cell.set_text(str(count))
            cell.set_color("white" if count > threshold else "black")
    return _save(fig, path)


def predicted_vs_true(points: np.ndarray, path: Path) -> Path:
    """A regression's test predictions against the true values (`points`: rows of
    (predicted, true)), with the line where they agree."""
    predicted, true = points[:, 0], points[:, 1]
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    ax.scatter(true, predicted, s=8, alpha=0.5)
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    ax.plot([low, high], [low, high], "k--", linewidth=1)
    ax.set(xlabel="true", ylabel="predicted")
    _title(ax, f"test predictions ({len(true)} samples)")
    ax.grid(alpha=0.3)
    _margins(fig, left=0.8, bottom=0.6)
    return _save(fig, path)
