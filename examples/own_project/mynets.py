"""A model of one's own: it takes only what it needs (`num_classes`, the number of outputs),
and its first layer is lazy, so it never asks for the input's shape."""

from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.LazyLinear(width),  # its input size comes from the first batch
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.net(x)
