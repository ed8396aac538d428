"""What a `dataset.source` may return, turned into the splits the data module serves.

A source (any `_target_`, the project's own or a user's) returns one of:
- `ImageTensors` or `FolderSplits` (the project's own sources),
- a `torch.utils.data.Dataset` of items of any form of batches.py ((input, target)
  pairs, (inputs tuple, target) pairs, dicts with `dataset.target_key`): served by a
  DataLoader (with `dataset.collate_fn`, where given),
- a pair `(inputs, targets)` of tensors or NumPy arrays of any shape and dtype, where
  `inputs` may also be a tuple or dict of them, or a dict of such columns holding the
  targets under `dataset.target_key`: held in memory on the training device (the fast
  path),
- a dict of such with `train` and optionally `val` and `test`.

A missing test split is split off train by `dataset.test_fraction`, a missing validation
split by `dataset.val_fraction`, both seeded by `dataset.split_seed`, so a source function
takes no split arguments. Inputs keep their shape; floating inputs become float32 (uint8
images stay uint8 until the device normalizes them). Targets are made what the task
needs: int64 class indices, or float32 columns N x D for regression and multi-label.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from experiment.data.batches import Layout, as_tensors, leaves, map_inputs, structured
from experiment.data.datasets import FolderSplits, ImageTensors, seeded_split
from experiment.data.loaders import model_inputs
from experiment.errors import DataError

SPLITS = ("train", "val", "test")


def layout_of(cfg, target: str = "dataset.source") -> Layout:
    """How `cfg` (the `dataset` node) says items split into inputs and target."""
    keys = getattr(cfg, "input_keys", None)
    return Layout(getattr(cfg, "target_key", None), tuple(keys) if keys else None, target)


def as_splits(result, cfg, task, target: str = "dataset.source"):
    """The source's `result` as ImageTensors (tensors) or FolderSplits (Datasets); `cfg`
    is the `dataset` node, `task` the run's task (it decides the targets' form)."""
    if isinstance(result, ImageTensors | FolderSplits):
        return result
    layout = layout_of(cfg, target)
    splits = _as_split_dict(result, target, layout)
    if all(_in_memory(v, layout) for v in splits.values()):
        splits = {k: layout.split(v) for k, v in splits.items()}
        raw = {k: _raw_labels(v[1]) for k, v in splits.items()}
        encode = label_encoding(raw, task, target)
        if encode is not None:
            splits = {k: (v[0], encode.indices(raw[k])) for k, v in splits.items()}
        tensors = {k: _pair_tensors(v, k, target, task) for k, v in splits.items()}
        return _tensor_splits(tensors, cfg, task, encode.names if encode else None)
    datasets = {k: _as_dataset(v, k, target, task, layout) for k, v in splits.items()}
    return _dataset_splits(datasets, cfg, task, layout)


def _as_split_dict(result, target: str, layout: Layout) -> dict:
    if isinstance(result, Mapping) and not _in_memory(result, layout):
        unknown = sorted(set(result) - set(SPLITS))
        if "train" not in result or unknown:
            columns = (
                "" if layout.target_key else " (for a dict of columns, set dataset.target_key)"
            )
            raise DataError(
                f"{target} returned a dict with keys {sorted(result)}: expected 'train' and "
                "optionally 'val' and 'test', each a Dataset or an (inputs, targets) pair"
                f"{columns}."
            )
        return {k: result[k] for k in SPLITS if result.get(k) is not None}
    if isinstance(result, Dataset) or _in_memory(result, layout):
        return {"train": result}
    raise DataError(
        f"{target} returned {type(result).__name__}: expected a torch.utils.data.Dataset, "
        "a pair (inputs, targets) of tensors or NumPy arrays (inputs may be a tuple or dict "
        "of them), a dict of such columns with dataset.target_key, or a dict of such with "
        "train (and optionally val, test)."
    )


def _array(value) -> bool:
    return isinstance(value, torch.Tensor | np.ndarray)


def _in_memory(value, layout: Layout) -> bool:
    """Whether `value` is one split held as arrays: a pair (inputs, targets), inputs a
    tensor/array or a tuple or dict of them, or a dict of columns with the target key."""
    if isinstance(value, Mapping):
        return layout.target_key in value and all(_array(v) for v in value.values())
    if not (isinstance(value, tuple | list) and len(value) == 2 and _array(value[1])):
        return False
    inputs = value[0]
    parts = list(inputs.values()) if isinstance(inputs, Mapping) else inputs
    if isinstance(inputs, Mapping | tuple | list):
        return len(parts) > 0 and all(_array(v) for v in parts)
    return _array(inputs)


def _pair_tensors(pair, split: str, target: str, task) -> tuple[object, torch.Tensor]:
    inputs, targets = as_tensors(pair[0]), torch.as_tensor(pair[1])
    counts = {len(x) for x in leaves(inputs)}
    if counts != {len(targets)} or len(targets) == 0:
        raise DataError(
            f"{target}: the {split} split has {'/'.join(map(str, sorted(counts)))} inputs "
            f"and {len(targets)} targets; they must be as many, and more than none."
        )
    for values in [*leaves(inputs), targets]:
        _check_finite(values, "targets" if values is targets else "inputs", split, target)
    return map_inputs(model_inputs, inputs), task.prepare_targets(targets)


def _check_finite(values: torch.Tensor, what: str, split: str, target: str) -> None:
    """NaN or infinity in the data: named here, not later as a loss that diverged."""
    if not values.is_floating_point():
        return
    bad = ~torch.isfinite(values).reshape(len(values), -1).all(1)
    count = int(bad.sum())
    if count:
        raise DataError(
            f"{target}: {count} of the {len(values)} samples of the {split} split have NaN "
            f"or infinite {what} (the first: sample {int(bad.nonzero()[0, 0])}). Drop or "
            "impute them before training: no model learns from them."
        )


def _tensor_splits(tensors: dict, cfg, task, names: list[str] | None) -> ImageTensors:
    train_x, train_y = tensors["train"]
    if "test" in tensors:
        test_x, test_y = tensors["test"]
    else:
        keep, held = seeded_split(len(train_y), cfg.test_fraction, cfg.split_seed)
        test_x, test_y = map_inputs(lambda x: x[held], train_x), train_y[held]
        train_x, train_y = map_inputs(lambda x: x[keep], train_x), train_y[keep]
    val_x, val_y = tensors.get("val", (None, None))
    labels = [y for y in (train_y, val_y, test_y) if y is not None]
    classes = _class_names(task, labels, names)
    return ImageTensors(train_x, train_y, test_x, test_y, classes, val_x, val_y)


def _class_names(task, labels: list[torch.Tensor], named) -> list[str] | None:
    """Class names for single-label classification (the source's own, else 0..C-1);
    None for tasks whose outputs are the targets' columns."""
    if not task.has_classes:
        return None
    if named is not None:
        return [str(c) for c in named]
    if any(y.dtype.is_floating_point or y.ndim != 1 for y in labels):
        return None  # the task's check names the problem
    return [str(i) for i in range(int(max(int(y.max()) for y in labels)) + 1)]


def _as_dataset(value, split: str, target: str, task, layout: Layout) -> Dataset:
    if isinstance(value, Dataset):
        return value
    inputs, targets = _pair_tensors(layout.split(value), split, target, task)
    if not structured(inputs):
        return TensorDataset(inputs, targets)
    return Items(inputs, targets)


class Items(Dataset):
    """In-memory inputs of several tensors (a tuple or dict) as a Dataset of pairs."""

    def __init__(self, inputs, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        return map_inputs(lambda x: x[index], self.inputs), self.targets[index]


def _dataset_splits(datasets: dict, cfg, task, layout: Layout) -> FolderSplits:
    target = layout.where
    train = datasets["train"]
    if len(train) == 0:
        raise DataError("dataset.source: the train split is empty.")
    named = getattr(datasets["train"], "classes", None)
    raw = {}
    # Labels read where the Dataset exposes them, or where it names no classes of its own
    # (then they are read once, as the class count needs them anyway).
    if task.has_classes and (_exposed_targets(train) is not None or named is None):
        raw = {k: _dataset_labels(v, layout) for k, v in datasets.items()}
        encode = label_encoding(raw, task, target)
        if encode is not None:
            datasets = {k: EncodedLabels(v, encode, raw[k], layout) for k, v in datasets.items()}
            named = encode.names
    train = datasets["train"]
    test = datasets.get("test")
    if test is None:
        keep, held = seeded_split(len(train), cfg.test_fraction, cfg.split_seed)
        train, test = Subset(train, keep.tolist()), Subset(train, held.tolist())
    first_input, first_target = layout.split(datasets["train"][0])
    input_shape = None if structured(first_input) else tuple(np.shape(first_input))
    labels = _known_labels(datasets["train"])
    if not labels and "train" in raw and raw["train"].dtype.kind in "iu":  # read above
        labels = [torch.as_tensor(raw["train"])]
    classes = _class_names(task, labels, named) if named or labels else None
    if classes is None and task.has_classes:
        train_labels = [int(layout.split(item)[1]) for item in datasets["train"]]  # one pass
        labels = [torch.as_tensor(train_labels)]
        classes = _class_names(task, labels, None)
    width = None if classes else _target_width(first_target)
    return FolderSplits(train, datasets.get("val"), test, classes, input_shape, width)


def _exposed_targets(dataset):
    """A Dataset's labels where it holds them apart from its samples, else None."""
    found = getattr(dataset, "targets", None)
    if found is None and isinstance(dataset, TensorDataset):
        found = dataset.tensors[1]
    return found


def _known_labels(dataset) -> list[torch.Tensor]:
    """A dataset's labels without reading its samples, where it exposes them."""
    found = _exposed_targets(dataset)
    return [torch.as_tensor(np.asarray(found))] if found is not None else []


def _target_width(target) -> int:
    target = torch.as_tensor(np.asarray(target))
    return 1 if target.ndim == 0 else int(target.shape[-1])


class LabelEncoding:
    """Class labels that are not 0..K-1 (1 and 2; 'cat' and 'dog'), as the indices
    0..K-1 a classifier's outputs are, in the order of the sorted labels of the training
    split. `names`: the labels as text, index by index: the classes the run, its
    confusion matrix and its logged model (and so `experiment-predict`) show."""

    def __init__(self, values: np.ndarray):
        self.values = values
        self.names = [str(v) for v in values.tolist()]
        self.lookup = {v: i for i, v in enumerate(values.tolist())}

    def indices(self, labels: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.values, labels).astype(np.int64)

    def index(self, label) -> int:
        return self.lookup[np.asarray(label).item()]


def label_encoding(raw: dict, task, target: str) -> LabelEncoding | None:
    """The encoding of single-label classification targets that are not already
    0..K-1 in the training split (None where they are, or where the targets are no class
    labels: the task's check names those); a label of val or test that the training
    split lacks is a DataError."""
    train = raw.get("train")
    if not task.has_classes or train is None or train.ndim != 1 or train.dtype.kind not in "iuUSOb":
        return None
    try:
        values = np.unique(train)
    except TypeError:  # labels of mixed types: the task's check names them
        return None
    if len(values) < 2:
        raise DataError(
            f"{target}: every sample of the train split has the label {values[0].item()!r}: "
            "classification needs two classes or more in the data it trains on."
        )
    for split, labels in raw.items():
        unknown = np.setdiff1d(np.unique(labels), values) if labels is not None else []
        if len(unknown):
            raise DataError(
                f"{target}: the {split} split has the label {unknown[0].item()!r}, which the "
                f"train split does not have (its {len(values)} classes: "
                f"{', '.join(map(str, values.tolist()[:10]))}{', ...' if len(values) > 10 else ''}"
                "). A classifier learns only the classes it is trained on: give the train "
                "split examples of every class, or leave that label out."
            )
    if values.dtype.kind in "iu" and np.array_equal(values, np.arange(len(values))):
        return None  # already the indices 0..K-1
    return LabelEncoding(values)


def _raw_labels(targets) -> np.ndarray:
    if isinstance(targets, torch.Tensor):
        return targets.detach().cpu().numpy()
    return np.asarray(targets)


def _dataset_labels(dataset, layout: Layout) -> np.ndarray:
    """A Dataset's labels: where it exposes them (targets), else read once."""
    known = _exposed_targets(dataset)
    if known is None:
        known = [layout.split(item)[1] for item in dataset]
    values = [_raw_labels(v) for v in known] if isinstance(known, list) else None
    if values is not None and all(v.ndim == 0 for v in values):
        return np.asarray([v.item() for v in values])
    return _raw_labels(known) if values is None else np.asarray(known, dtype=object)


class EncodedLabels(Dataset):
    """A Dataset whose labels are given as their indices (LabelEncoding); `labels`: its
    labels as read once, so `targets` needs no pass over the samples."""

    def __init__(
        self, dataset: Dataset, encoding: LabelEncoding, labels: np.ndarray, layout: Layout
    ):
        self.dataset, self.encoding, self.layout = dataset, encoding, layout
        self.targets = encoding.indices(labels)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        label = self.layout.split(item)[1]
        return self.layout.with_target(item, self.encoding.index(label))
