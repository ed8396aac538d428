"""What `experiment-predict` reads: images, a folder of them, or feature rows (.npy, .csv),
as the array a logged model takes (its metadata: input shape and dtype, deployable.py);
for a model of several named inputs, an .npz holding an array under each name.

Images are decoded as training decoded them (image_cache.decode: the model's channels,
resized to its height and width, uint8). Arrays and rows are checked against the model's
input shape; a mismatch is a DataError naming both shapes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from experiment.data.image_cache import IMAGE_SUFFIXES, decode
from experiment.errors import DataError


@dataclass(frozen=True)
class ModelInput:
    """What a logged model takes: one sample's shape and its dtype."""

    shape: tuple[int, ...]
    dtype: str  # numpy's name: uint8, float32, int64, ...

    @property
    def images(self) -> bool:
        return len(self.shape) == 3


def read(path: Path, wanted: ModelInput) -> tuple[list[str], np.ndarray]:
    """(a name per sample, the samples as one array of the model's shape and dtype)."""
    if not path.exists():
        raise DataError(
            f"No such input: {path}. Give an image, a folder of images, a .npy or a .csv."
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
        return [str(p) for p in files], _images(files, wanted)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return [str(path)], _images([path], wanted)
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise DataError(f"Cannot read {path} as a NumPy array: {err}") from None
    elif suffix == ".csv":
        array = _csv_rows(path)
    else:
        raise DataError(
            f"Cannot read {path}: give an image ({', '.join(sorted(IMAGE_SUFFIXES))}), a "
            "folder of images, a .npy array or a .csv of feature rows."
        )
    samples = _as_samples(array, wanted, path)
    return [str(i) for i in range(len(samples))], samples


def _images(files: list[Path], wanted: ModelInput) -> np.ndarray:
    if not wanted.images:
        raise DataError(
            f"This model takes feature rows of shape {list(wanted.shape)}, not images: "
            "give a .npy or .csv."
        )
    channels, height, width = wanted.shape
    if channels not in (1, 3):
        raise DataError(f"This model takes {channels}-channel inputs: give them as a .npy array.")
    decoded = []
    for path in files:
        result = decode(path, (height, width), channels)
        if isinstance(result, str):
            raise DataError(f"Cannot read image {path}: {result}")
        decoded.append(result)
    return _as_dtype(np.stack(decoded), wanted, files[0].parent)


def _csv_rows(path: Path) -> np.ndarray:
    """Numeric rows; a first row that is not numbers is a header."""
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path} holds no rows of numbers.")
    widths = {len(r) for r in rows}
    if len(widths) > 1:
        raise DataError(f"{path}: rows of different lengths ({sorted(widths)}).")
    try:
        return np.array([[float(v) for v in row] for row in rows])
    except ValueError as err:
        raise DataError(f"{path}: a value that is not a number ({err}).") from None


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
        return True
    except ValueError:
        return False


def _as_samples(array: np.ndarray, wanted: ModelInput, source: Path) -> np.ndarray:
    """N samples of the model's shape: a batch, a single sample, or flat rows."""
    shape = tuple(wanted.shape)
    if array.shape == shape:  # one sample
        array = array[None]
    elif array.ndim == 2 and len(shape) > 1 and array.shape[1] == int(np.prod(shape)):
        array = array.reshape(-1, *shape)  # rows of flattened samples
    if array.shape[1:] != shape:
        raise DataError(
            f"{source} holds inputs of shape {list(array.shape)}; the model takes "
            f"N x {' x '.join(map(str, shape))} ({wanted.dtype})."
        )
    return _as_dtype(array, wanted, source)


def _as_dtype(array: np.ndarray, wanted: ModelInput, source: Path) -> np.ndarray:
    """The model's dtype; uint8 pixels only from whole numbers in 0..255."""
    if array.dtype == np.dtype(wanted.dtype):
        return array
    if wanted.dtype == "uint8":
        whole = np.all(np.isfinite(array)) and np.all(array == np.round(array))
        if not (whole and array.min() >= 0 and array.max() <= 255):
            raise DataError(
                f"{source}: this model takes uint8 pixels (whole numbers 0..255); the inputs "
                f"are {array.dtype} in [{array.min():g}, {array.max():g}]."
            )
    return array.astype(wanted.dtype)


def read_named(path: Path, inputs: list[dict]) -> tuple[list[str], dict[str, np.ndarray]]:
    """(a name per sample, {input name: array}) from an .npz holding every input the
    model takes (`inputs`: its metadata's experiment.inputs)."""
    wanted = [entry["name"] for entry in inputs]
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise DataError(
            f"This model takes several inputs ({', '.join(wanted)}): give an .npz file "
            f"holding an array under each name (numpy.savez); {path} is not one."
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            found = {name: arrays[name] for name in arrays.files}
    except (ValueError, OSError) as err:
        raise DataError(f"Cannot read {path} as an .npz: {err}") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(
            f"{path} has no array {missing[0]!r} (it holds {', '.join(sorted(found)) or 'none'}); "
            f"the model takes {', '.join(wanted)}."
        )
    counts = {len(found[name]) for name in wanted}
    if len(counts) != 1:
        raise DataError(f"{path}: the inputs hold different numbers of samples {sorted(counts)}.")
    samples = {
        entry["name"]: found[entry["name"]].astype(entry["dtype"], copy=False) for entry in inputs
    }
    return [str(i) for i in range(counts.pop())], samples
