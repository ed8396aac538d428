"""The data path alone on the CPU: one epoch of training batches over the MNIST shape.

Ours: shuffle an index, slice uint8 tensors, normalize and augment (random crop with
padding) batched. Reference: the tutorial path, a DataLoader over PIL images with
`ToTensor` + `Normalize` (+ `RandomCrop`), no model in either.

    .venv/bin/python -m benchmarks.data_path [--workers 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from benchmarks._common import machine
from benchmarks.loop_vs_reference import PilImages
from experiment.data.loaders import Augmentation, BatchTransform, DeviceLoader

N, C, H, W = 60_000, 1, 28, 28
BATCH = 128


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, C, H, W), dtype=np.uint8)
    labels = rng.integers(0, 10, N)

    loader = DeviceLoader(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        BATCH,
        BatchTransform([0.1307], [0.3081], cpu, augment=Augmentation(crop_padding=2)),
        shuffle=True,
    )
    ours = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        batches = sum(1 for _ in loader)
        ours.append(time.perf_counter() - start)

    dataset = PilImages(images, labels, [0.1307], [0.3081])
    dataset.transform = transforms.Compose(
        [
            transforms.RandomCrop(28, padding=2),
            transforms.ToTensor(),
            transforms.Normalize([0.1307], [0.3081]),
        ]
    )
    reference_loader = DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )
    start = time.perf_counter()
    for _ in reference_loader:
        pass
    reference = time.perf_counter() - start

    best = min(ours)
    print(f"machine: {machine()}")
    print(f"one epoch of {batches} batches of {BATCH} over {N}x{C}x{H}x{W} (normalize + crop):")
    print(
        f"ours {best:.3f} s (median {sorted(ours)[len(ours) // 2]:.3f} s over {args.repeats}); "
        f"reference DataLoader with {args.workers} workers {reference:.2f} s; "
        f"ratio {reference / best:.0f}x"
    )


if __name__ == "__main__":
    main()
