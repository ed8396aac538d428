"""A task of one's own: one model, two heads, one loss that weighs both.

From a wine's 12 other measurements, `TwoHeads` predicts its cultivar (3 classes) and its
alcohol content (standardized). `ClassAndValue` implements experiment's task protocol
(`experiment.training.tasks.Task`): the loss is cross-entropy plus `weight` x the squared
error of the alcohol; the metrics are the cultivar's accuracy and the alcohol's mean
absolute error; a prediction is both (class probabilities and the alcohol), which is also
what the logged model answers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_wine
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import MeanAbsoluteError

from experiment.errors import DataError
from experiment.training.tasks import Task


class WineParts(Dataset):
    """Items (measurements, (cultivar, alcohol)): one input, two targets."""

    def __init__(self):
        table = load_wine()
        features = torch.tensor(table.data, dtype=torch.float32)
        alcohol = features[:, 0]
        rest = features[:, 1:]
        self.inputs = (rest - rest.mean(0)) / rest.std(0)
        self.alcohol = (alcohol - alcohol.mean()) / alcohol.std()
        self.cultivar = torch.tensor(table.target)

    def __len__(self) -> int:
        return len(self.cultivar)

    def __getitem__(self, index: int):
        return self.inputs[index], (self.cultivar[index], self.alcohol[index])


def wine_parts() -> WineParts:
    return WineParts()


class TwoHeads(nn.Module):
    def __init__(self, in_features: int, num_classes: int, width: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(in_features, width), nn.ReLU())
        self.cultivar = nn.Linear(width, num_classes)
        self.alcohol = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shared = self.trunk(x)
        return {"cultivar": self.cultivar(shared), "alcohol": self.alcohol(shared).squeeze(1)}


class ClassAndValue(Task):
    name = "class_and_value"
    curve_metric = "acc"

    def __init__(self, weight: float = 0.5, num_classes: int = 3):
        self.weight, self.num_classes = weight, num_classes

    def loss(self, outputs, targets) -> torch.Tensor:
        cultivar, alcohol = targets
        value_loss = F.mse_loss(outputs["alcohol"], alcohol.float())
        return F.cross_entropy(outputs["cultivar"], cultivar.long()) + self.weight * value_loss

    def predictions(self, outputs) -> dict[str, torch.Tensor]:
        return {
            "probabilities": outputs["cultivar"].float().softmax(dim=1),
            "alcohol": outputs["alcohol"].float(),
        }

    def metrics(self, num_outputs: int) -> dict[str, Metric]:
        return {
            "acc": MulticlassAccuracy(self.num_classes, average="micro"),
            "alcohol_mae": MeanAbsoluteError(),
        }

    def metric_inputs(self, metric: Metric, predictions, targets) -> tuple:
        cultivar, alcohol = targets
        if isinstance(metric, MeanAbsoluteError):
            return predictions["alcohol"], alcohol.float()
        return predictions["probabilities"], cultivar.long()

    def check_targets(self, targets, num_outputs: int) -> None:
        if not (isinstance(targets, tuple) and len(targets) == 2):
            raise DataError(
                "ClassAndValue takes targets (cultivar, alcohol): items (x, (cultivar, alcohol))"
            )
