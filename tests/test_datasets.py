"""Each dataset loads from small files written in its own on-disk format by the real loader."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10

from experiment.data import datasets
from experiment.data.loaders import build_loaders
from experiment.errors import DataError
from experiment.training.builders import load_source
from tests.conftest import compose_config


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """The MNIST idx format: magic (0, 0, dtype 0x08, ndim), big-endian dims, raw uint8."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)


def make_mnist(root, folder: str, n_train=30, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    images = {
        s: rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        for s, n in (("train", n_train), ("t10k", n_test))
    }
    labels = {s: rng.integers(0, 10, len(images[s]), dtype=np.uint8) for s in images}
    for split in images:
        write_idx(raw / f"{split}-images-idx3-ubyte", images[split])
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    return images, labels


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_from_idx_files(tmp_path, name, folder):
    images, labels = make_mnist(tmp_path, folder)
    loaded = getattr(datasets, name)(root=str(tmp_path), download=False)
    assert loaded.train_images.shape == (30, 1, 28, 28) and loaded.train_images.dtype == torch.uint8
    assert torch.equal(loaded.train_images[:, 0], torch.from_numpy(images["train"]))
    assert torch.equal(loaded.test_labels, torch.from_numpy(labels["t10k"]).long())
    assert len(loaded.classes) == 10


def make_cifar(root, monkeypatch, n_per_batch=8, seed=0):
    """CIFAR-10's python pickles; the real loader checks md5 sums, so the expected sums
    are set to those of these files."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True)
    stored = {}

    def dump(name, obj):
        (folder / name).write_bytes(pickle.dumps(obj))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    train_list, test_list = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n_per_batch).tolist()
        stored[name] = (data, labels)
        entry = dump(name, {"data": data, "labels": labels})
        (test_list if name == "test_batch" else train_list).append(entry)
    classes = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    meta_name, meta_md5 = dump("batches.meta", {"label_names": classes})
    monkeypatch.setattr(CIFAR10, "train_list", train_list)
    monkeypatch.setattr(CIFAR10, "test_list", test_list)
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": meta_md5})
    return stored, classes


def test_cifar10_from_python_pickles(tmp_path, monkeypatch):
    stored, classes = make_cifar(tmp_path, monkeypatch)
    loaded = datasets.cifar10(root=str(tmp_path))
    assert loaded.train_images.shape == (40, 3, 32, 32)
    assert loaded.test_images.shape == (8, 3, 32, 32)
    first = torch.from_numpy(stored["data_batch_1"][0][0].reshape(3, 32, 32))
    assert torch.equal(loaded.train_images[0], first)  # channels-first, pixel for pixel
    assert loaded.classes == classes


def make_image_folder(root, splits=("train",), classes=("cat", "dog"), per_class=6, size=10):
    rng = np.random.default_rng(0)
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_image_folder_splits_and_batches(tmp_path):
    make_image_folder(tmp_path, splits=("train", "test"), per_class=6)
    cfg = compose_config(
        [
            "dataset=image_folder",
            f"dataset.source.path={tmp_path}",
            f"dataset.cache_dir={tmp_path / 'cache'}",
            "dataset.source.image_size=16",
            "dataset.num_workers=0",
            "dataset.batch_size=4",
            "dataset.val_fraction=0.25",
        ]
    )
    data = build_loaders(cfg.dataset, load_source(cfg.dataset), torch.device("cpu"))
    assert data.classes == ["cat", "dog"] and data.input_shape == (3, 16, 16)
    seen = sum(len(y) for _, y in data.train) + sum(len(y) for _, y in data.val)
    assert seen == 12 and sum(len(y) for _, y in data.test) == 12
    images, labels = next(iter(data.train))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


def test_image_folder_without_test_split_holds_one_out(tmp_path):
    make_image_folder(tmp_path, per_class=10)
    splits = datasets.image_folder(str(tmp_path), image_size=8, test_fraction=0.2)
    assert len(splits.test) == 4 and len(splits.train) == 16
    assert not set(splits.test.indices) & set(splits.train.indices)


def test_corrupt_image_is_reported_with_its_path(tmp_path):
    make_image_folder(tmp_path, per_class=2)
    bad = tmp_path / "train" / "dog" / "broken.png"
    bad.write_bytes(b"not a png at all")
    splits = datasets.image_folder(str(tmp_path), image_size=8, test_fraction=0.5)
    with pytest.raises(DataError, match="broken.png"):
        for i in range(len(splits.train.dataset)):
            splits.train.dataset[i]


def test_digits_is_the_real_bundled_dataset():
    loaded = datasets.digits()
    total = len(loaded.train_labels) + len(loaded.test_labels)
    assert total == 1797 and loaded.train_images.shape[1:] == (1, 8, 8)
    assert loaded.train_images.max() == 255 and set(loaded.classes) == {str(i) for i in range(10)}


def test_digits_read_from_scikit_learns_file_equal_load_digits():
    import numpy as np
    from sklearn.datasets import load_digits

    from experiment.data.datasets import _digits_table

    pixels, classes = _digits_table()
    bunch = load_digits()
    assert np.array_equal(pixels, bunch.images) and np.array_equal(classes, bunch.target)


class _LabelledItems(torch.utils.data.Dataset):
    """A Dataset of a user's own: (input, label) items, labels of any kind, no targets."""

    def __init__(self, labels):
        self.labels = list(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return torch.full((3,), float(index)), self.labels[index]


@pytest.mark.parametrize("path", ["arrays", "dataset"])
@pytest.mark.parametrize(
    "train,test,classes",
    [
        ([1, 2, 2, 1] * 10, [2, 1], ["1", "2"]),
        (["dog", "cat", "cat", "dog"] * 10, ["cat", "dog"], ["cat", "dog"]),
        ([0, 2, 1, 1] * 10, [2, 0], ["0", "1", "2"]),  # 0..K-1 already: as they are
    ],
)
def test_class_labels_become_indices_from_the_train_split_and_keep_their_names(
    path, train, test, classes
):
    from types import SimpleNamespace

    from experiment.data.sources import as_splits
    from experiment.training.tasks import Classification

    cfg = SimpleNamespace(test_fraction=0.2, split_seed=0)
    if path == "arrays":
        source = {
            "train": (np.zeros((len(train), 3), "float32"), np.asarray(train)),
            "test": (np.zeros((len(test), 3), "float32"), np.asarray(test)),
        }
    else:
        source = {"train": _LabelledItems(train), "test": _LabelledItems(test)}
    splits = as_splits(source, cfg, Classification())
    assert splits.classes == classes
    if path == "arrays":
        train_indices, test_indices = splits.train_labels.tolist(), splits.test_labels.tolist()
    else:
        train_indices = [splits.train[i][1] for i in range(len(train))]
        test_indices = [splits.test[i][1] for i in range(len(test))]
    assert [classes[i] for i in train_indices] == [str(label) for label in train]
    assert [classes[i] for i in test_indices] == [str(label) for label in test]


@pytest.mark.parametrize("path", ["arrays", "dataset"])
def test_a_label_the_train_split_lacks_is_one_clear_error(path):
    from types import SimpleNamespace

    from experiment.data.sources import as_splits
    from experiment.errors import DataError
    from experiment.training.tasks import Classification

    train, val = [1, 2] * 10, [1, 3]
    if path == "arrays":
        source = {
            "train": (np.zeros((20, 3), "float32"), np.asarray(train)),
            "val": (np.zeros((2, 3), "float32"), np.asarray(val)),
        }
    else:
        source = {"train": _LabelledItems(train), "val": _LabelledItems(val)}
    cfg = SimpleNamespace(test_fraction=0.2, split_seed=0)
    with pytest.raises(DataError, match=r"the val split has the label 3, which the train split"):
        as_splits(source, cfg, Classification())
