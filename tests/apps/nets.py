"""Models of a user's own for the tests: what the project's own nets do not cover."""

from __future__ import annotations

import math

from torch import nn


class DataDependent(nn.Module):
    """A branch on the values of its input: `torch.export` cannot trace it (the pt2
    format), eager PyTorch runs it (the pickled format)."""

    def __init__(self, input_shape, num_classes: int):
        super().__init__()
        width = math.prod(input_shape)
        self.positive, self.other = nn.Linear(width, num_classes), nn.Linear(width, num_classes)

    def forward(self, x):
        x = x.flatten(1).float()
        if x.sum() > 0:
            return self.positive(x)
        return self.other(x)
