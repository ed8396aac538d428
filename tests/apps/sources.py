"""Data sources of a user's own for the tests: labels that are not 0..K-1."""

from __future__ import annotations

import numpy as np


def string_labels(n: int = 240, seed: int = 0):
    """Feature rows labelled 'cat' or 'dog' by the sign of their first feature."""
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, 6)).astype("float32")
    labels = np.where(inputs[:, 0] > 0, "dog", "cat")
    return {"train": (inputs, labels)}
