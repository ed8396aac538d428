"""Image folders decoded once: a uint8 cache of every split, resized to the run's size.

Decoding JPEGs in every epoch of every trial costs far more than training a small model on
the result. The first run over a folder decodes and resizes each image once (threads over
the cores) into `.npy` arrays under `dataset.cache_dir`; that run and every later one (each
trial of a sweep) loads the arrays and trains from the device-resident path.

The cache is keyed by the folder's file list, sizes and modification times, the image size
and the channel count: a changed folder gets a new cache. An image that cannot be decoded
is left out and named in a warning (at every run that uses the cache). Builders take a
file lock, build under a temporary name and rename it into place, so concurrent sweep
workers wait for one build and never see half a cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

from experiment.errors import DataError
from experiment.system import durable

log = logging.getLogger(__name__)
LOCK_TIMEOUT_S = 3600.0  # decoding a large folder takes minutes; an hour means it is stuck
FORMAT = 1  # bump when the layout of a cache entry changes
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


def folder_files(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(image file, class index) for every image under split_dir/<class>/, sorted."""
    files = []
    for index, name in enumerate(classes):
        for path in sorted((split_dir / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                files.append((path, index))
    return files


def cache_key(splits: dict[str, list[tuple[Path, int]]], image_size: int, channels: int) -> str:
    digest = hashlib.sha1(f"{FORMAT}:{image_size}:{channels}".encode())
    for split, files in sorted(splits.items()):
        for path, label in files:
            stat = path.stat()
            digest.update(f"{split}|{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def estimated_gb(splits: dict[str, list], image_size: int, channels: int) -> float:
    count = sum(len(files) for files in splits.values())
    return count * channels * image_size * image_size / 1e9


def load_or_build(
    splits: dict[str, list[tuple[Path, int]]], image_size: int, channels: int, cache_dir: Path
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (uint8 N x C x H x W images, int64 labels)} from the cache, built first if
    this folder (as it is now) has none."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    entry = cache_dir / cache_key(splits, image_size, channels)
    if not (entry / "meta.json").is_file():
        with _locked(cache_dir / f"{entry.name}.lock"):
            if not (entry / "meta.json").is_file():  # nobody built it while we waited
                _build(splits, image_size, channels, entry)
    else:
        log.info("Image cache: %s", entry)
    meta = json.loads((entry / "meta.json").read_text())
    if meta["skipped"]:
        _warn_skipped(meta["skipped"])
    return {
        split: (
            np.load(entry / f"{split}.images.npy", mmap_mode="r"),
            np.load(entry / f"{split}.labels.npy"),
        )
        for split in splits
    }


@contextlib.contextmanager
def _locked(path: Path):
    """The folder's build lock: another process decoding the same folder is waited for,
    up to LOCK_TIMEOUT_S, then the run stops saying which lock it waited on."""
    lock = FileLock(path, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except Timeout:
        raise DataError(
            f"Waited {LOCK_TIMEOUT_S / 60:.0f} minutes for another process building the image "
            f"cache ({path}). If no such process runs, delete that lock file and run again."
        ) from None
    try:
        yield
    finally:
        lock.release()


def _build(splits, image_size: int, channels: int, entry: Path) -> None:
    partial = entry.with_name(f"{entry.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    count = sum(len(files) for files in splits.values())
    log.info("Image cache: decoding %s images once at %spx into %s", count, image_size, entry)
    skipped = {}
    try:
        for split, files in splits.items():
            skipped.update(_decode_split(split, files, image_size, channels, partial))
        (partial / "meta.json").write_text(json.dumps({"skipped": skipped, "images": count}))
        durable.fsync_files(partial)  # on disk before it is renamed into place
        partial.rename(entry)  # whole, or not there at all
        durable.fsync_folder(entry.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _decode_split(split, files, image_size: int, channels: int, folder: Path) -> dict[str, str]:
    images = np.lib.format.open_memmap(
        folder / f"{split}.images.npy",
        mode="w+",
        dtype=np.uint8,
        shape=(len(files), channels, image_size, image_size),
    )
    kept, skipped = [], {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = pool.map(lambda f: decode(f[0], (image_size, image_size), channels), files)
        for (path, label), result in zip(files, decoded, strict=True):
            if isinstance(result, str):
                skipped[str(path)] = result
                continue
            images[len(kept)] = result
            kept.append(label)
    images.flush()
    del images
    if skipped:  # keep only the decoded rows
        full = np.load(folder / f"{split}.images.npy", mmap_mode="r")[: len(kept)].copy()
        np.save(folder / f"{split}.images.npy", full)
    np.save(folder / f"{split}.labels.npy", np.asarray(kept, dtype=np.int64))
    return skipped


def decode(path: Path, size: tuple[int, int], channels: int) -> np.ndarray | str:
    """The image as uint8 C x H x W at `size` (height, width), or why it could not be
    read. Training (this cache) and experiment-predict decode images this one way."""
    from PIL import Image, UnidentifiedImageError

    height, width = size
    try:
        with Image.open(path) as image:
            image.draft("RGB" if channels == 3 else "L", (width, height))  # JPEG: decode smaller
            image = image.convert("L" if channels == 1 else "RGB")
            image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return f"{type(err).__name__}: {err}"
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _warn_skipped(skipped: dict[str, str]) -> None:
    names = "; ".join(f"{path} ({why})" for path, why in list(skipped.items())[:10])
    more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    log.warning(
        "Left out %s image(s) that cannot be decoded: %s%s. "
        "Remove or replace them; a changed folder rebuilds the cache.",
        len(skipped),
        names,
        more,
    )
