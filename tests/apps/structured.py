"""Sources and models of several inputs, for the tests of batches of any structure: the
same synthetic problem (the class is which of two inputs has the larger sum) served as
pairs of a tuple, as dict columns, as Dataset items of either form."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset


def _columns(samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    left = rng.normal(size=(samples, 4)).astype(np.float32)
    right = rng.normal(size=(samples, 3)).astype(np.float32)
    label = (left.sum(1) > right.sum(1)).astype(np.int64)
    return {"left": left, "right": right, "label": label}


def tuple_pairs(samples: int = 400, seed: int = 0):
    """((left, right), label) arrays: held on the device, model(left, right)."""
    c = _columns(samples, seed)
    return (c["left"], c["right"]), c["label"]


def dict_columns(samples: int = 400, seed: int = 0, extra: bool = False):
    """{"left", "right", "label"} columns (and an "ignored" one): model(left=, right=)."""
    c = _columns(samples, seed)
    if extra:
        c["ignored"] = np.zeros(samples, dtype=np.float32)
    return c


class Items(Dataset):
    def __init__(self, form: str, samples: int, seed: int):
        self.columns, self.form = _columns(samples, seed), form

    def __len__(self) -> int:
        return len(self.columns["label"])

    def __getitem__(self, i):
        c = self.columns
        if self.form == "dict":
            return {"left": c["left"][i], "right": c["right"][i], "label": int(c["label"][i])}
        return (torch.from_numpy(c["left"][i]), torch.from_numpy(c["right"][i])), int(c["label"][i])


def dataset_items(form: str = "dict", samples: int = 400, seed: int = 0) -> Items:
    """A Dataset of dict items or of ((left, right), label) pairs: the DataLoader path."""
    return Items(form, samples, seed)


def stacked(items: list[dict]) -> dict:
    """A collate_fn of one's own: dict items to a dict batch."""
    return {
        "left": torch.tensor(np.stack([i["left"] for i in items])),
        "right": torch.tensor(np.stack([i["right"] for i in items])),
        "label": torch.tensor([i["label"] for i in items]),
    }


class TwoInputs(nn.Module):
    """forward(left, right): positionally or by name."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.left, self.right = nn.Linear(4, 8), nn.Linear(3, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.left(left) - self.right(right)))


def brier(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """A plain function metric: the Brier score of class probabilities."""
    truth = torch.nn.functional.one_hot(targets, predictions.shape[1]).float()
    return float(((predictions - truth) ** 2).sum(1).mean())
