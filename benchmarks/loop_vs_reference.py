"""Our training loop against the tutorial-style loop, same model, data, batch size, epochs.

The reference is written the way the PyTorch tutorials write it: a Dataset yielding PIL
images, `ToTensor` + `Normalize`, a `DataLoader`, `.to(device)` per batch and
`loss.item()` per batch. Ours: uint8 data held on the device, batched normalization,
shuffled-index slices, metrics read once per epoch, channels_last conv layout (and bf16 autocast on
CUDA). Prints training images/s for each and the ratio.

    .venv/bin/python -m benchmarks.loop_vs_reference [--epochs 1] [--samples N] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks._common import machine
from experiment.data.loaders import BatchTransform, DeviceLoader
from experiment.models.nets import CNN
from experiment.runtime.device import autocast_dtype, seed_everything
from experiment.training.engine import FitSettings, train_one_epoch

SHAPES = {"mnist": (60_000, 1, 28, 28), "cifar": (50_000, 3, 32, 32)}


class PilImages(Dataset):
    """torchvision-style: one PIL image per __getitem__, transformed per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean, std):
        self.images, self.labels = images, labels
        self.transform = transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(mean, std)]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        pixels = self.images[i]
        image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
        return self.transform(image), int(self.labels[i])


def reference_epoch(model, loader, optimizer, device) -> float:
    model.train()
    total = 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        total += loss.item()  # the per-batch host sync the tutorials have
    return total


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(shape, epochs: int, batch: int, workers: int, device) -> tuple[float, float]:
    n, c, h, w = shape
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    mean, std = [0.5] * c, [0.25] * c

    seed_everything(0)
    model = CNN((c, h, w), 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        PilImages(images, labels, mean, std),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    reference_epoch(model, itertools.islice(loader, 5), optimizer, device)  # warm-up
    ref = timed(
        lambda: [reference_epoch(model, loader, optimizer, device) for _ in range(epochs)], device
    )

    seed_everything(0)
    model = CNN((c, h, w), 10).to(device)
    channels_last = True  # as build_parts does for conv nets, on the CPU and on CUDA
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=1e-3, **({"fused": True} if device.type == "cuda" else {})
    )
    ours_loader = DeviceLoader(
        torch.from_numpy(images).to(device),
        torch.from_numpy(labels).to(device),
        batch,
        BatchTransform(mean, std, device, channels_last=channels_last),
        shuffle=True,
    )
    settings = FitSettings(epochs=epochs, device=device, amp_dtype=autocast_dtype("auto", device))
    warm_up = list(itertools.islice(ours_loader, 5))
    train_one_epoch(model, warm_up, optimizer, settings)
    ours = timed(
        lambda: [train_one_epoch(model, ours_loader, optimizer, settings) for _ in range(epochs)],
        device,
    )
    return n * epochs / ref, n * epochs / ours


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader workers")
    parser.add_argument("--samples", type=int, default=None, help="fewer images (quick runs)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"machine: {machine()}; device {device}; batch {args.batch_size}; "
        f"epochs {args.epochs}; default cnn"
    )
    for name, shape in SHAPES.items():
        shape = (args.samples or shape[0], *shape[1:])
        ref, ours = bench(shape, args.epochs, args.batch_size, args.workers, device)
        print(
            f"{name} {'x'.join(map(str, shape))}: reference {ref:,.0f} img/s, "
            f"ours {ours:,.0f} img/s, ratio {ours / ref:.2f}"
        )


if __name__ == "__main__":
    main()
