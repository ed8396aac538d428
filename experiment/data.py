"""Batches for the training loop: splits, device-side normalization and augmentation.

Every path ends in the same place: uint8 images reach the training device, where one
batched `BatchTransform` normalizes (and, for training, augments) them. In-memory datasets
live on the device whole and batches are slices of a shuffled index (no per-sample Python,
no host-to-device copy per batch); image folders come through a DataLoader whose workers
only decode and resize.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from experiment.datasets import FolderSplits, ImageTensors, seeded_split
from experiment.errors import ExperimentError

Batch = tuple[torch.Tensor, torch.Tensor]


class BatchTransform:
    """uint8 N x C x H x W on the device -> normalized float, optionally augmented."""

    def __init__(
        self,
        mean,
        std,
        device: torch.device,
        *,
        augment: bool = False,
        crop_padding: int = 0,
        hflip: bool = False,
        channels_last: bool = False,
        generator: torch.Generator | None = None,
    ):
        # Folding /255 into the affine map makes normalization one multiply-add.
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.augment, self.crop_padding, self.hflip = augment, crop_padding, hflip
        self.channels_last, self.generator = channels_last, generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, images.float(), self.scale)
        if self.augment:
            if self.crop_padding:
                x = random_crop(x, self.crop_padding, self.generator)
            if self.hflip:
                x = random_hflip(x, self.generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def random_crop(x: torch.Tensor, padding: int, generator=None) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch (zero is the mean after normalization)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=generator)
    rows = (dy + torch.arange(h, device=x.device))[:, :, None]  # n x h x 1
    cols = (dx + torch.arange(w, device=x.device))[:, None, :]  # n x 1 x w
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor, generator=None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class DeviceLoader:
    """Batches sliced from uint8 tensors that already live on the training device."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        transform: BatchTransform,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
    ):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.transform, self.shuffle, self.generator = transform, shuffle, generator

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        n, device = len(self.labels), self.labels.device
        if self.shuffle:
            order = torch.randperm(n, device=device, generator=self.generator)
        else:
            order = torch.arange(n, device=device)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.transform(self.images[index]), self.labels[index]


class HostLoader:
    """A DataLoader of uint8 batches, copied to the device and transformed there."""

    def __init__(self, loader: DataLoader, transform: BatchTransform, device: torch.device):
        self.loader, self.transform, self.device = loader, transform, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield self.transform(images), labels.to(self.device, non_blocking=True)


@dataclass
class DataBundle:
    train: DeviceLoader | HostLoader
    val: DeviceLoader | HostLoader
    test: DeviceLoader | HostLoader
    input_shape: tuple[int, int, int]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def use_channels_last(self) -> None:
        """Hand batches to a channels_last conv net in its own memory layout."""
        for loader in (self.train, self.val, self.test):
            loader.transform.channels_last = True


def build_data(
    cfg: DictConfig, device: torch.device, *, seed: int = 0, channels_last: bool = False
) -> DataBundle:
    """Load `cfg` (a `dataset` node) and wrap its splits in loaders for `device`."""
    try:
        source = instantiate(cfg.source)
    except InstantiationException as err:  # unwrap our own message from Hydra's wrapper
        if isinstance(err.__cause__, ExperimentError):
            raise err.__cause__ from None
        raise
    generator = torch.Generator(device=device).manual_seed(seed)

    def transform(train: bool) -> BatchTransform:
        return BatchTransform(
            cfg.mean,
            cfg.std,
            device,
            augment=train and cfg.augment,
            crop_padding=cfg.crop_padding,
            hflip=cfg.hflip,
            channels_last=channels_last,
            generator=generator,
        )

    if isinstance(source, ImageTensors):
        return _device_bundle(cfg, source, device, transform, generator)
    assert isinstance(source, FolderSplits), f"unexpected dataset source {type(source)}"
    return _host_bundle(cfg, source, device, transform, seed)


def _device_bundle(cfg, source: ImageTensors, device, transform, generator) -> DataBundle:
    keep, held = seeded_split(len(source.train_labels), cfg.val_fraction, cfg.split_seed)
    on_device = {
        "train": (source.train_images[keep], source.train_labels[keep]),
        "val": (source.train_images[held], source.train_labels[held]),
        "test": (source.test_images, source.test_labels),
    }
    on_device = {k: (x.to(device), y.to(device)) for k, (x, y) in on_device.items()}
    return DataBundle(
        train=DeviceLoader(
            *on_device["train"], cfg.batch_size, transform(True), shuffle=True, generator=generator
        ),
        val=DeviceLoader(*on_device["val"], cfg.eval_batch_size, transform(False), shuffle=False),
        test=DeviceLoader(*on_device["test"], cfg.eval_batch_size, transform(False), shuffle=False),
        input_shape=tuple(source.train_images.shape[1:]),
        classes=source.classes,
    )


def _host_bundle(cfg, source: FolderSplits, device, transform, seed: int) -> DataBundle:
    train, val = source.train, source.val
    if val is None:
        keep, held = seeded_split(len(train), cfg.val_fraction, cfg.split_seed)
        train, val = Subset(train, keep.tolist()), Subset(train, held.tolist())
    workers = cfg.num_workers
    common = dict(
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0
    )

    def loader(ds, batch_size: int, shuffle: bool, train_split: bool) -> HostLoader:
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        dl = DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, **common)
        return HostLoader(dl, transform(train_split), device)

    return DataBundle(
        train=loader(train, cfg.batch_size, True, True),
        val=loader(val, cfg.eval_batch_size, False, False),
        test=loader(source.test, cfg.eval_batch_size, False, False),
        input_shape=source.input_shape,
        classes=source.classes,
    )
