"""Dataset sources: where the images come from, as raw uint8 tensors or an image folder.

Each `_target_` of a `dataset.source` node is one of these functions. In-memory sources
return `ImageTensors` (uint8, N x C x H x W), which the data module keeps on the
training device; `image_folder` returns `FolderSplits`, served by a DataLoader.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from experiment.data import image_cache
from experiment.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class ImageTensors:
    """A dataset small enough to hold in memory: inputs (uint8 images N x C x H x W, any
    tensor of N samples, or a tuple or dict of such: batches.py) and targets (int64
    labels, or float columns with `classes` None). Without val tensors, validation is
    split from train by `dataset.val_fraction`."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str] | None
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One sample's shape; None for inputs of several tensors."""
        if not isinstance(self.train_images, torch.Tensor):
            return None
        return tuple(self.train_images.shape[1:])

    @property
    def num_outputs(self) -> int:
        """What the model outputs per sample: a score per class, or one per target column."""
        if self.classes is not None:
            return len(self.classes)
        return 1 if self.train_labels.ndim == 1 else int(self.train_labels.shape[1])


@dataclass
class FolderSplits:
    """Image-folder datasets built per split; `val` is None when it is split from train."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    classes: list[str] | None
    input_shape: tuple[int, ...] | None  # None for inputs of several tensors
    target_width: int | None = None  # targets' columns, where there are no classes

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else int(self.target_width or 1)


def seeded_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (kept, held_out) with `fraction` of n held out, reproducible by seed."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = max(1, round(n * fraction))
    return order[n_held:], order[:n_held]


def fold_split(n: int, folds: int, fold: int, seed: int, labels=None):
    """Indices (kept, held_out) of K-fold cross-validation: n samples dealt into `folds`
    parts in a seeded order, part `fold` held out. With `labels` (a class per sample) the
    order is each class's samples in turn, so every part gets each class's share to within
    one sample (stratified); sizes differ by one at most. Each sample is held out in
    exactly one fold."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    if labels is not None:  # a stable sort keeps the seeded order within each class
        order = order[torch.sort(torch.as_tensor(labels)[order], stable=True).indices]
    part = torch.arange(n) % folds
    return order[part != fold], order[part == fold]


def class_labels(targets):
    """`targets` as one integer class per sample, or None (regression, several columns):
    what a stratified fold split goes by."""
    if isinstance(targets, ConcatDataset):  # train and val folders pooled
        parts = [class_labels(part) for part in targets.datasets]
        return None if any(p is None for p in parts) else torch.cat(parts)
    if isinstance(targets, Subset):  # a folder's training part, its test held out
        labels = class_labels(targets.dataset)
        return None if labels is None else labels[torch.as_tensor(targets.indices)]
    if not isinstance(targets, torch.Tensor):
        targets = getattr(targets, "targets", None)  # an ImageFolder's, say
        if targets is None:
            return None
        targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.is_floating_point():
        return None
    return targets


@functools.lru_cache(maxsize=1)
def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits.csv.gz as (N x 8 x 8 pixel values 0..16, N classes), read
    once per process (trials of a sweep share it). The file is read where scikit-learn
    keeps it without importing scikit-learn, which costs ~1.3 s; `load_digits` where it
    is not there."""
    spec = importlib.util.find_spec("sklearn")
    folder = Path(next(iter(spec.submodule_search_locations))) if spec else None
    table = folder / "datasets" / "data" / "digits.csv.gz" if folder else None
    if table is None or not table.is_file():
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    values = np.loadtxt(table, delimiter=",")
    return values[:, :-1].reshape(-1, 8, 8), values[:, -1].astype(np.int64)


def digits(test_fraction: float = 0.2, seed: int = 0) -> ImageTensors:
    """scikit-learn's bundled 8x8 digits (values 0..16), rescaled to uint8."""
    pixels, classes = _digits_table()
    images = torch.from_numpy(np.rint(pixels * (255.0 / 16.0)).astype(np.uint8))
    images = images.unsqueeze(1)  # N x 1 x 8 x 8
    labels = torch.from_numpy(classes.astype(np.int64))
    train_idx, test_idx = seeded_split(len(labels), test_fraction, seed)
    return ImageTensors(
        images[train_idx],
        labels[train_idx],
        images[test_idx],
        labels[test_idx],
        [str(c) for c in range(10)],
    )


def synthetic(
    num_train: int,
    num_test: int,
    channels: int,
    height: int,
    width: int,
    num_classes: int,
    noise: float = 0.5,
    seed: int = 0,
) -> ImageTensors:
    """Class-conditional random images: one random prototype per class plus noise.

    Learnable (so tests can check that training improves), any shape, no files.
    """
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, channels, height, width, generator=gen)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=gen)
        pixels = prototypes[labels] + noise * torch.randn(n, channels, height, width, generator=gen)
        return (pixels.clamp(0, 1) * 255).round().to(torch.uint8), labels

    train_images, train_labels = draw(num_train)
    test_images, test_labels = draw(num_test)
    classes = [f"class_{i}" for i in range(num_classes)]
    return ImageTensors(train_images, train_labels, test_images, test_labels, classes)


def synthetic_regression(
    num_train: int,
    num_test: int,
    features: int,
    targets: int = 1,
    noise: float = 0.1,
    seed: int = 0,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Tabular regression: float features N x features and targets N x targets, a fixed
    random smooth function (tanh of a linear map, then linear) plus noise. Returns the
    splits as (inputs, targets) pairs, as a user's source would; validation is split off
    by the run."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(features, 2 * features, generator=gen) / features**0.5
    readout = torch.randn(2 * features, targets, generator=gen) / (2 * features) ** 0.5

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, features, generator=gen)
        y = torch.tanh(x @ hidden) @ readout
        return x, y + noise * torch.randn(n, targets, generator=gen)

    return {"train": draw(num_train), "test": draw(num_test)}


# --------------------------------------------------------------------------- torchvision


def _expected_files(dataset_cls) -> tuple[str, list[str]]:
    """The folder (relative to root) and files torchvision looks for, for the error message."""
    if hasattr(dataset_cls, "resources"):  # MNIST family: raw idx files
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in dataset_cls.resources]
        return os.path.join(dataset_cls.__name__, "raw"), names
    names = [name for name, _ in dataset_cls.train_list + dataset_cls.test_list]
    return dataset_cls.base_folder, [*names, dataset_cls.meta["filename"]]


def _load_torchvision(dataset_cls, root: str, download: bool) -> ImageTensors:
    root = os.path.abspath(os.path.expanduser(root))
    try:
        train = dataset_cls(root, train=True, download=download)
        test = dataset_cls(root, train=False, download=download)
    except (RuntimeError, OSError) as err:
        folder, files = _expected_files(dataset_cls)
        raise DataError(
            f"{dataset_cls.__name__} data not found or unreadable under "
            f"{os.path.join(root, folder)} ({err}). Expected files: {', '.join(files)}. "
            "Copy them there, point dataset.source.root at the folder that holds "
            f"'{folder.split(os.sep)[0]}', or set dataset.source.download=true where the "
            "internet is reachable."
        ) from None

    def to_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.as_tensor(np.asarray(ds.data))
        # MNIST stores N x H x W, CIFAR N x H x W x C: both become N x C x H x W.
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)

    return ImageTensors(*to_tensors(train), *to_tensors(test), list(train.classes))


def mnist(root: str = "data", download: bool = False) -> ImageTensors:
    from torchvision.datasets import MNIST

    return _load_torchvision(MNIST, root, download)


def fashion_mnist(root: str = "data", download: bool = False) -> ImageTensors:
    from torchvision.datasets import FashionMNIST

    return _load_torchvision(FashionMNIST, root, download)


def cifar10(root: str = "data", download: bool = False) -> ImageTensors:
    from torchvision.datasets import CIFAR10

    return _load_torchvision(CIFAR10, root, download)


# --------------------------------------------------------------------------- image folder


def _class_folders(split_dir: Path) -> list[Path]:
    return sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _check_folder(split_dir: Path) -> None:
    """Fail early, naming the folder, on the layouts ImageFolder would reject cryptically."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    classes = _class_folders(split_dir)
    layout = f"{split_dir}/<class_name>/<image>{{{','.join(IMG_EXTENSIONS[:3])},...}}"
    if not classes:
        raise DataError(f"No class folders in {split_dir}. Expected one folder per class: {layout}")
    empty = [
        c.name
        for c in classes
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in c.rglob("*") if f.is_file())
    ]
    if len(empty) == len(classes):
        raise DataError(f"No images found in {split_dir}. Expected {layout}")
    if len(classes) < 2:
        raise DataError(
            f"Only one class folder ({classes[0].name}) in {split_dir}: "
            "classification needs at least two. Expected " + layout
        )


def image_folder(
    path: str,
    image_size: int = 64,
    channels: int = 3,
    test_fraction: float = 0.2,
    seed: int = 0,
    cache_dir: str | None = None,
    cache_max_gb: float = 8.0,
) -> ImageTensors | FolderSplits:
    """A folder of images, one subfolder per class, resized to image_size.

    With `cache_dir`, every image is decoded once into a uint8 cache (image_cache.py) and
    the splits come back as in-memory tensors, served from the training device. Without
    it, or when the cache would exceed `cache_max_gb`, torchvision ImageFolder splits are
    decoded by DataLoader workers in every epoch. Either way normalization and
    augmentation happen batched on the training device (data.py).
    """
    root = Path(path).expanduser().resolve()
    if root.is_file():
        raise DataError(
            f"Image folder {root} is a file, not a folder. Set dataset.source.path to a folder "
            "with train/<class_name>/*.jpg (and optionally val/ and test/)."
        )
    if not root.is_dir():
        raise DataError(
            f"Image folder {root} does not exist. Set dataset.source.path to a folder with "
            "train/<class_name>/*.jpg (and optionally val/ and test/)."
        )
    if not (root / "train").is_dir():
        raise DataError(f"{root} has no train/ subfolder. Expected {root}/train/<class_name>/*.jpg")
    split_dirs = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    for split_dir in split_dirs.values():
        _check_folder(split_dir)
    classes = [c.name for c in _class_folders(split_dirs["train"])]
    for split_dir in split_dirs.values():
        found = [c.name for c in _class_folders(split_dir)]
        if found != classes:
            raise DataError(
                f"Class folders differ between {split_dirs['train']} ({classes}) and "
                f"{split_dir} ({found}); every split needs the same classes."
            )
    if cache_dir is not None:
        files = {name: image_cache.folder_files(d, classes) for name, d in split_dirs.items()}
        size_gb = image_cache.estimated_gb(files, image_size, channels)
        if size_gb <= cache_max_gb:
            arrays = image_cache.load_or_build(
                files, image_size, channels, Path(cache_dir).expanduser().resolve()
            )
            _check_decoded(arrays, split_dirs, classes)
            return _cached_splits(arrays, classes, test_fraction, seed)
        log.info(
            "Image folder %s: its cache would take %.1f GB, more than "
            "dataset.cache_max_gb=%g; decoding with DataLoader workers instead.",
            root,
            size_gb,
            cache_max_gb,
        )
    return _folder_splits(split_dirs, classes, image_size, channels, test_fraction, seed)


def _check_decoded(arrays: dict, split_dirs: dict, classes: list[str]) -> None:
    """What is left once the images that cannot be decoded are left out: images in every
    split, two classes or more in the training split."""
    for split, (images, _) in arrays.items():
        if len(images) == 0:
            raise DataError(
                f"No image in {split_dirs[split]} can be decoded (the warning above names "
                "them): replace the files with images PIL can read."
            )
    kept = sorted({classes[i] for i in np.unique(arrays["train"][1])})
    if len(kept) < 2:
        raise DataError(
            f"Of the images in {split_dirs['train']}, only those of class {kept} can be "
            "decoded: classification needs two classes or more. Replace the broken files."
        )


def _cached_splits(arrays: dict, classes: list[str], test_fraction: float, seed: int):
    tensors = {
        split: (torch.from_numpy(np.array(images)), torch.from_numpy(labels))  # read once
        for split, (images, labels) in arrays.items()
    }
    train_images, train_labels = tensors["train"]
    if "test" in tensors:
        test_images, test_labels = tensors["test"]
    else:
        keep, held = seeded_split(len(train_labels), test_fraction, seed)
        test_images, test_labels = train_images[held], train_labels[held]
        train_images, train_labels = train_images[keep], train_labels[keep]
    val_images, val_labels = tensors.get("val", (None, None))
    return ImageTensors(
        train_images, train_labels, test_images, test_labels, classes, val_images, val_labels
    )


def _folder_splits(split_dirs, classes, image_size, channels, test_fraction, seed) -> FolderSplits:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    to_uint8 = transforms.Compose(
        [
            _Convert("L" if channels == 1 else "RGB"),
            transforms.Resize((image_size, image_size)),
            transforms.PILToTensor(),
        ]
    )
    folders = {
        name: ImageFolder(str(d), transform=to_uint8, loader=_load_image)
        for name, d in split_dirs.items()
    }
    train = folders["train"]
    test = folders.get("test")
    if test is None:
        keep, held = seeded_split(len(train), test_fraction, seed)
        train, test = Subset(train, keep.tolist()), Subset(train, held.tolist())
    return FolderSplits(
        train, folders.get("val"), test, classes, (channels, image_size, image_size)
    )


class _Convert:
    """Picklable PIL mode conversion (DataLoader workers pickle the transform)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image):
        return image.convert(self.mode)


def _load_image(path: str):
    """PIL loader that names the file when it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"Cannot read image {path}: {err}. Remove or replace the file.") from None
