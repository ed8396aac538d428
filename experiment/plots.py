"""Per-run figures logged to MLflow as PNG: learning curves and the test confusion matrix.

Drawn with matplotlib's Agg backend, so they render without a display and show in the
MLflow UI without a network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, float]], path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side."""
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [h[f"{split}/{metric}"] for h in history], style, label=split)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(matrix: np.ndarray, classes: list[str], path: Path) -> Path:
    """Counts of (true class, predicted class) on the test split, with class names."""
    plt = _pyplot()
    n = len(classes)
    size = max(4.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"test confusion matrix (acc {accuracy:.4f})")
    if n <= 20:  # numbers stay readable
        threshold = matrix.max() / 2
        for i in range(n):
            for j in range(n):
                color = "white" if matrix[i, j] > threshold else "black"
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
