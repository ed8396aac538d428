"""The data a run trained on, as an MLflow dataset input: its name, a digest of the data
itself, where it came from and the split sizes, so runs on different data are told apart
(the run page's "Datasets used", `mlflow.search_runs` on `dataset.digest`).

The digest reads the data, not its config: the same `dataset.source` over a changed
folder gets a new one. In-memory tensors are hashed by shape, dtype and up to
`SAMPLED_ROWS` evenly spaced rows of each split (a few MB, whatever the dataset's size);
a DataLoader's dataset by its list of files (sizes and modification times) where it has
one, else by its type and length.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from experiment.data.batches import leaves

SAMPLED_ROWS = 2048
SPLITS = ("train", "val", "test")
DIGEST_LENGTH = 16


def split_sizes(data) -> dict[str, int]:
    """Samples per split of a DataBundle (its DeviceLoaders' tensors, or DataLoaders')."""
    return {name: _size(getattr(data, name)) for name in SPLITS}


def _size(loader) -> int:
    if hasattr(loader, "inputs"):  # DeviceLoader
        return len(loader.targets)
    return len(loader.loader.dataset)  # HostLoader


def digest(data) -> str:
    """A short hash of the data of every split (see the module's doc)."""
    hasher = hashlib.sha256()
    for name in SPLITS:
        loader = getattr(data, name)
        hasher.update(name.encode())
        if hasattr(loader, "inputs"):  # DeviceLoader
            for tensor in (*leaves(loader.inputs), loader.targets):
                _hash_tensor(hasher, tensor)
        else:
            _hash_dataset(hasher, loader.loader.dataset)
    return hasher.hexdigest()[:DIGEST_LENGTH]


def _hash_tensor(hasher, tensor: torch.Tensor) -> None:
    hasher.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
    if len(tensor) == 0:
        return
    step = max(1, len(tensor) // SAMPLED_ROWS)
    rows = tensor[::step][:SAMPLED_ROWS].detach().cpu().contiguous()
    hasher.update(rows.numpy().tobytes())


def _hash_dataset(hasher, dataset) -> None:
    """A Dataset by its files (ImageFolder's `samples`, through Subsets), else its length."""
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # a Subset
        hasher.update(repr(list(dataset.indices)[:SAMPLED_ROWS]).encode())
        dataset = dataset.dataset
    hasher.update(f"{type(dataset).__name__} {len(dataset)}".encode())
    for path, *_ in getattr(dataset, "samples", [])[:100_000]:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        hasher.update(f"{path} {stat.st_size} {stat.st_mtime_ns}".encode())


def dataset_input(source_node: dict, data):
    """(an MLflow dataset, its input tags) for a run whose `dataset.source` node is
    `source_node` (resolved) and whose data is the DataBundle `data`."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    target = str(source_node.get("_target_", "unknown"))
    root = source_node.get("root")
    if root and Path(str(root)).exists():  # an image folder: the folder is its source
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        with warnings.catch_warnings():  # two registered classes share the name: one meaning
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(Path(str(root)).resolve()))
    else:
        arguments = {k: str(v) for k, v in source_node.items()}
        source = CodeDatasetSource(tags={"dataset.source": json.dumps(arguments, sort_keys=True)})
    name = str(source_node.get("name") or target.rsplit(".", 1)[-1])
    sizes = split_sizes(data)
    tags = {f"split.{split}": str(count) for split, count in sizes.items()}
    return MetaDataset(source=source, name=name, digest=digest(data)), tags
