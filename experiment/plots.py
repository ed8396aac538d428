"""Per-run figures logged to MLflow as PNG: learning curves, and the task's test figure
(a classification's confusion matrix, a regression's predicted-against-true values).

Drawn on matplotlib's Agg canvas, so they render without a display and show in the
MLflow UI without a network.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


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


def learning_curves(history: list[dict[str, float]], path: Path, metric: str = "acc") -> Path:
    """Loss and the task's `metric` per epoch, train and validation, side by side."""
    epochs = np.arange(1, len(history) + 1)
    fig = _figure(10, 4)
    axes = fig.subplots(1, 2)
    for ax, name in zip(axes, ("loss", metric), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [h[f"{split}/{name}"] for h in history], style, label=split)
        ax.set(xlabel="epoch", ylabel=name, title=name)
        ax.grid(alpha=0.3)
        ax.legend()
    _margins(fig, left=0.8, bottom=0.6)
    fig.subplots_adjust(wspace=0.25)
    return _save(fig, path)


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts of (true class, predicted class) on the test split, with class names (a
    cell no sample fell in is left blank)."""
    n = len(classes)
    size = max(4.5, 0.45 * n + 2)
    fig = _figure(size, size)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"test confusion matrix (acc {accuracy:.4f})")
    if n <= 20:  # numbers stay readable; empty cells stay blank, so the errors stand out
        threshold = matrix.max() / 2
        for i, j in zip(*np.nonzero(matrix), strict=True):
            color = "white" if matrix[i, j] > threshold else "black"
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    label = 0.075 * max((len(str(c)) for c in classes), default=1)  # inches at 10 pt
    _margins(fig, left=0.6 + label, bottom=0.6 + (0.71 * label if n > 6 else 0.15))
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
    ax.set(xlabel="true", ylabel="predicted", title=f"test predictions ({len(true)} samples)")
    ax.grid(alpha=0.3)
    _margins(fig, left=0.8, bottom=0.6)
    return _save(fig, path)
