"""Sources and models of one's own that are wrong in ways a run must name before it trains."""

from __future__ import annotations

import numpy as np
from torch import nn


def _features(samples: int = 120) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(samples, 5)).astype(np.float32)


def non_finite_inputs(**_):
    x = _features()
    x[3, 1], x[7, 0] = np.nan, np.inf
    return x, (x[:, 2] > 0).astype(np.int64)


def non_finite_targets(**_):
    x = _features()
    y = x[:, :1].copy()
    y[5] = np.nan
    return x, y


def one_class(**_):
    return _features(), np.zeros(120, dtype=np.int64)


class NoParameters(nn.Module):
    """A model with nothing to train."""

    def __init__(self, num_classes: int, **_):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return x.flatten(1)[:, : self.num_classes]
