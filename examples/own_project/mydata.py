"""Datasets of one's own, from scikit-learn's bundled tables (no download).

A source returns what it has: a pair (inputs, targets) of arrays (held on the training
device), or a torch Dataset (read by a DataLoader). It takes no split arguments: the run
splits off validation and test sets itself (dataset.val_fraction, dataset.test_fraction).
"""

import numpy as np
import torch
from sklearn.datasets import load_diabetes, load_wine
from torch.utils.data import Dataset


def _standardized(values: np.ndarray) -> np.ndarray:
    return ((values - values.mean(0)) / values.std(0)).astype(np.float32)


def diabetes():
    """Regression: disease progression after one year from 10 baseline measurements of
    442 patients. Targets standardized (r2 does not depend on their scale)."""
    features, target = load_diabetes(return_X_y=True)
    return _standardized(features), _standardized(target)


def wine():
    """Tabular classification: three cultivars from 13 chemical measurements, 178 wines."""
    features, target = load_wine(return_X_y=True)
    return _standardized(features), target


class WineDataset(Dataset):
    """The same table as a torch Dataset, one (features, class) pair per index."""

    classes = ["class_0", "class_1", "class_2"]

    def __init__(self):
        features, target = wine()
        self.features, self.target = torch.from_numpy(features), torch.from_numpy(target)

    def __len__(self):
        return len(self.target)

    def __getitem__(self, index):
        return self.features[index], int(self.target[index])


def wine_dataset():
    return WineDataset()
