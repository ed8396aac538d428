"""An image folder of JPEG photos: the DataLoader path (decode and resize every epoch)
against the uint8 cache (decode once, then batches from memory), no model in either.

Makes a two-class folder of real photos (crops of scikit-learn's two sample photos), then
times, at 224 px, with the image_folder dataset's own augmentation (random-resized crops
and flips) and normalization: building the cache (the first epoch's extra cost), an epoch
from the cache, and an epoch through DataLoader workers. Prints the ratio.

    .venv/bin/python -m benchmarks.image_cache [--images 2000] [--epochs 4] [--source-size 224]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from sklearn.datasets import load_sample_images

from benchmarks._common import ROOT, machine
from experiment.config.run_config import RunConfig
from experiment.config.schema import register_configs
from experiment.data.datasets import image_folder
from experiment.data.loaders import build_loaders

SIZE = 224


def make_folder(root: Path, count: int, source_size: int | None) -> Path:
    """`count` JPEGs, two classes, each a random 85-100% crop of one sample photo saved
    at the photo's own 640 x 427 (as a photo folder holds them), or, with `source_size`,
    at source_size x source_size."""
    photos = load_sample_images().images  # two 427 x 640 photos
    rng = np.random.default_rng(0)
    for index in range(count):
        label = index % 2
        photo, name = photos[label], ("china", "flower")[label]
        share = rng.uniform(0.85, 1.0)
        height, width = int(427 * share), int(640 * share)
        top, left = rng.integers(0, 427 - height + 1), rng.integers(0, 640 - width + 1)
        crop = Image.fromarray(photo[top : top + height, left : left + width])
        crop = crop.resize((source_size, source_size) if source_size else (640, 427))
        folder = root / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{index}.jpg", quality=90)
    return root


def dataset_config(folder: Path, workers: int):
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "dataset=image_folder",
                f"dataset.source.path={folder}",
                f"dataset.source.image_size={SIZE}",
                f"dataset.num_workers={workers}",
                "trainer.checkpoint_dir=unused",
            ],
        )
    return RunConfig.enter(cfg).dataset


def epoch_seconds(loader, epochs: int) -> list[float]:
    times = []
    for epoch in range(epochs):
        loader.seed(epoch)
        start = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--source-size", type=int, default=None, help="resize the JPEGs first")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-image-cache-"))
    folder = make_folder(work / "photos", args.images, args.source_size)
    cfg = dataset_config(folder, args.workers)
    cpu = torch.device("cpu")

    start = time.perf_counter()
    cached = image_folder(str(folder), SIZE, cache_dir=str(work / "cache"))
    build = time.perf_counter() - start
    start = time.perf_counter()
    image_folder(str(folder), SIZE, cache_dir=str(work / "cache"))
    reload = time.perf_counter() - start
    folders = image_folder(str(folder), SIZE, cache_dir=None)

    print(f"machine: {machine()}")
    made = f"{args.source_size} px" if args.source_size else "640 x 427 px"
    print(f"{args.images} JPEGs of {made}, trained at {SIZE} px, batch {cfg.batch_size}")
    print(f"cache build (decode + resize once): {build:.1f} s; reloading it: {reload:.2f} s")
    for augment in (False, True):  # augmentation runs on the device in both paths
        cfg.augment = augment
        from_cache = epoch_seconds(build_loaders(cfg, cached, cpu).train, args.epochs)
        from_files = epoch_seconds(build_loaders(cfg, folders, cpu).train, args.epochs)
        what = "random-resized crops + flips" if augment else "no augmentation"
        print(f"{what}:")
        print("  epoch seconds, cache:      " + ", ".join(f"{t:.2f}" for t in from_cache))
        print(
            f"  epoch seconds, DataLoader ({args.workers} workers): "
            + ", ".join(f"{t:.2f}" for t in from_files)
        )
        later = statistics.median(from_files[1:]) / statistics.median(from_cache[1:])
        print(f"  from the second epoch (medians): {later:.1f}x faster from the cache")
        first = (build + from_cache[0]) / from_files[0]
        print(f"  first epoch, building the cache: {first:.2f}x the DataLoader epoch")


if __name__ == "__main__":
    main()
