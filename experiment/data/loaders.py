"""Batches for the training loop: splits, device-side normalization and augmentation.

Every path ends in the same place: inputs reach the training device, where
`BatchTransform` augments (for training) and normalizes images, batched. In-memory datasets
live on the device whole and batches are slices of a shuffled copy (no per-sample Python,
no host-to-device copy per batch); image folders and a user's own Datasets come through a
DataLoader. Image steps apply to image batches (N x C x H x W) only, and only as
configured: other inputs (tabular features, sequences) pass through as they are.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Subset

from experiment.data.batches import PAIRS, Layout, cat_inputs, map_inputs
from experiment.data.datasets import (
    FolderSplits,
    ImageTensors,
    class_labels,
    fold_split,
    seeded_split,
)
from experiment.data.sharding import RankBatchSampler, batch_count, batch_slices, rank_share
from experiment.errors import ConfigValueError, DataError
from experiment.runtime.distributed import SINGLE, Ranks

Batch = tuple[object, torch.Tensor]  # (inputs of any form of batches.py, targets)


@dataclass(frozen=True)
class Augmentation:
    """Random changes to training images: padded crops and flips (on uint8, the whole
    epoch at once) and random-resized crops (on float, per batch)."""

    crop_padding: int = 0
    hflip: bool = False
    resized_crop_scale: tuple[float, float] | None = None  # [min, max] share of the area


class BatchTransform:
    """Augmentation and normalization of uint8 N x C x H x W batches on their device.

    Augmentation works on uint8, before normalization, as torchvision's transforms do
    (crop padding is black); normalization is one multiply-add, in place, on the float32
    copy of a batch.
    """

    def __init__(
        self,
        mean,
        std,
        device: torch.device,
        *,
        augment: Augmentation | None = None,
        channels_last: bool = False,
        generator: torch.Generator | None = None,
    ):
        # Folding /255 into the affine map makes normalization one multiply-add. Without
        # mean and std (a user's data), uint8 pixels are scaled to [0, 1] and float images
        # are left as they are.
        std_t = torch.tensor(std if std else [1.0], dtype=torch.float32, device=device)
        mean_t = torch.tensor(mean if mean else [0.0], dtype=torch.float32, device=device)
        std_t, mean_t = std_t.view(1, -1, 1, 1), mean_t.view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t
        self.float_scale = 1.0 / std_t  # for float images: (x - mean) / std
        self.normalizes_floats = bool(mean) and bool(std)
        self.augmentation = augment or Augmentation()
        self.augment = augment is not None
        self.channels_last, self.generator = channels_last, generator

    def augmented(self, images: torch.Tensor) -> torch.Tensor:
        if self.augmentation.crop_padding:
            images = random_crop(images, self.augmentation.crop_padding, self.generator)
        if self.augmentation.hflip:
            images = random_hflip(images, self.generator)
        return images

    def normalized(self, images: torch.Tensor) -> torch.Tensor:
        """One batch as normalized float32 (random-resized crops, when augmenting photos,
        need float pixels: they come here, per batch). Non-image inputs pass through."""
        if images.ndim != 4:
            return images
        x = normalize_images(
            images, self.scale, self.float_scale, self.shift, self.normalizes_floats
        )
        if self.augment and self.augmentation.resized_crop_scale:
            x = random_resized_crop(x, self.augmentation.resized_crop_scale, self.generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        augment = self.augment and images.ndim == 4
        return self.normalized(self.augmented(images) if augment else images)

    def batch(self, inputs):
        """A batch's inputs of any form (batches.py), each image tensor transformed."""
        return map_inputs(self, inputs)


def normalize_images(images, uint8_scale, float_scale, shift, normalizes_floats: bool):
    """Images as normalized float32: uint8 pixels by one multiply-add that folds in the
    /255, float images by (x - mean) / std where mean and std are given, else as they
    are. The run's batches and the logged model (deployable.py) both go through here."""
    if images.dtype == torch.uint8:
        return images.float().mul_(uint8_scale).add_(shift)  # in place: one float copy
    if normalizes_floats:  # not in place: .float() of float32 is the input itself
        return images.float().mul(float_scale).add_(shift)
    return images.float()


def random_crop(x: torch.Tensor, padding: int, generator=None) -> torch.Tensor:
    """Random crop of each zero-padded sample back to its size, for a batch in random order.

    Offsets are dealt out by position (sample i gets offset (i + phase) mod the number of
    offsets): in a shuffled batch every sample still gets a uniformly random offset, and
    each offset becomes one strided slice copy, with no per-sample index tensors. Cheap
    enough to crop a whole shuffled epoch at once.
    """
    _, _, h, w = x.shape
    side = 2 * padding + 1
    padded = F.pad(x, (padding, padding, padding, padding))
    phase = int(torch.randint(side * side, (1,), generator=_host(generator)))
    out = torch.empty_like(x)
    for offset in range(side * side):
        dy, dx = divmod((offset + phase) % (side * side), side)
        out[offset :: side * side] = padded[offset :: side * side, :, dy : dy + h, dx : dx + w]
    return out


def random_hflip(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Flip half the samples of a batch in random order: every other one, from a random start."""
    start = int(torch.randint(2, (1,), generator=_host(generator)))
    out = x.clone()
    out[start::2] = x[start::2].flip(3)
    return out


def random_resized_crop(
    x: torch.Tensor, scale: tuple[float, float], generator=None, ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """A random crop of each sample (a share `scale` of its area, aspect ratio in `ratio`)
    resized back to the sample's size: one affine grid and one bilinear resampling for
    the whole batch on its device."""
    n = x.shape[0]
    device = x.device
    draws = torch.rand(4, n, device=device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * draws[0]
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draws[1]
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)  # as shares of the full side
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 1, 1] = width, height
    theta[:, 0, 2] = (1 - width) * (2 * draws[2] - 1)  # the crop's centre, inside the image
    theta[:, 1, 2] = (1 - height) * (2 * draws[3] - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _host(generator: torch.Generator | None) -> torch.Generator | None:
    """A CPU generator for the one random number per call (no device round trip)."""
    return generator if generator is None or generator.device.type == "cpu" else None


class DeviceLoader:
    """Batches sliced from tensors that already live on the training device (uint8
    images, feature rows, or a tuple or dict of such inputs).

    Each epoch gathers the data once in shuffled order and augments it in a few large
    operations; a batch is then a contiguous slice plus one multiply-add, so the Python
    cost per batch stays at a handful of tensor operations.

    With several ranks (`ranks`), `batch_size` is the global batch: every rank draws the
    same shuffled, augmented epoch (same generator seed) and takes its share of it by the
    rule of `experiment.data.sharding`, as the DataLoader path does.
    """

    def __init__(
        self,
        inputs,
        targets: torch.Tensor,
        batch_size: int,
        transform: BatchTransform,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        ranks: Ranks = SINGLE,
    ):
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.transform, self.shuffle, self.generator = transform, shuffle, generator
        self.ranks = ranks

    def __len__(self) -> int:
        return batch_count(len(self.targets), self.batch_size, self.ranks, self.shuffle)

    def seed(self, value: int) -> None:
        if self.generator is not None:  # shared with the augmenting transform
            self.generator.manual_seed(value)

    def __iter__(self) -> Iterator[Batch]:
        inputs, targets = self.inputs, self.targets
        if self.shuffle:
            order = torch.randperm(len(targets), device=targets.device, generator=self.generator)
            inputs, targets = map_inputs(lambda x: x[order], inputs), targets[order]
        if self.transform.augment:
            inputs = map_inputs(self._augmented, inputs)
        inputs = map_inputs(lambda x: rank_share(x, self.ranks), inputs)
        targets = rank_share(targets, self.ranks)
        per_rank = self.batch_size // self.ranks.world_size
        normalized = self.transform.normalized
        for part in batch_slices(len(targets), per_rank, len(self)):
            yield map_inputs(lambda x: normalized(x[part]), inputs), targets[part]  # noqa: B023

    def _augmented(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform.augmented(x) if x.ndim == 4 else x


def example_batch(loader, size: int = 4):
    """A few real, normalized inputs (of any form) for timing the model."""
    inputs, _ = next(iter(loader))
    return map_inputs(lambda x: x[:size].contiguous(memory_format=torch.contiguous_format), inputs)


def model_inputs(inputs: torch.Tensor) -> torch.Tensor:
    """Inputs as a model takes them: floating (and bool) ones as float32; uint8 images
    stay uint8 until the device normalizes them, integer ids stay as they are."""
    if inputs.dtype.is_floating_point or inputs.dtype == torch.bool:
        return inputs if inputs.dtype == torch.float32 else inputs.float()
    return inputs


def _worker_errors_as_raised(loader):
    """The DataLoader's batches; a DataError a worker process raised comes out as that
    process raised it (one line), not with the worker's traceback folded into it."""
    try:
        yield from loader
    except DataError as err:
        text = str(err)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.splitlines() if line.strip()][-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None


class HostLoader:
    """A DataLoader's batches, split into inputs and targets by `layout`, copied to the
    device and transformed there; `targets` puts a batch's targets in the form the task
    takes (e.g. a regression's N x 1); `generator`: the one that shuffles the loader's
    samples (reseeded per epoch)."""

    def __init__(
        self,
        loader: DataLoader,
        transform: BatchTransform,
        device: torch.device,
        targets=None,
        generator: torch.Generator | None = None,
        layout: Layout = PAIRS,
    ):
        self.loader, self.transform, self.device = loader, transform, device
        self.prepare_targets = targets or (lambda y: y)
        self.generator, self.layout = generator, layout

    def __len__(self) -> int:
        return len(self.loader)

    def seed(self, value: int) -> None:
        for generator in (self.generator, self.transform.generator):
            if generator is not None:
                generator.manual_seed(value)

    def __iter__(self) -> Iterator[Batch]:
        for batch in _worker_errors_as_raised(self.loader):
            inputs, targets = self.layout.split(batch)
            inputs = map_inputs(self._on_device, inputs)
            # Several targets (a tuple, a dict) are for a task of one's own.
            targets = map_inputs(self._target_on_device, targets)
            yield inputs, self.prepare_targets(targets)

    def _target_on_device(self, y) -> torch.Tensor:
        return torch.as_tensor(y).to(self.device, non_blocking=True)

    def raw_inputs(self):
        """The first batch's inputs as the DataLoader gives them (before the device)."""
        inputs, _ = self.layout.split(next(_worker_errors_as_raised(self.loader)))
        return map_inputs(lambda x: model_inputs(torch.as_tensor(x)), inputs)

    def _on_device(self, x) -> torch.Tensor:
        return self.transform(model_inputs(torch.as_tensor(x).to(self.device, non_blocking=True)))


@dataclass(frozen=True)
class HostBatches:
    """How a DataLoader's batches become the loop's: `targets` puts a batch's targets in
    the task's form, `layout` splits items (batches.py), `collate_fn` the DataLoader's
    (`dataset.collate_fn`)."""

    targets: object = None
    layout: Layout = PAIRS
    collate_fn: object = None


@dataclass
class DataBundle:
    train: DeviceLoader | HostLoader
    val: DeviceLoader | HostLoader
    test: DeviceLoader | HostLoader
    input_shape: tuple[int, ...] | None  # one sample's; None for inputs of several tensors
    classes: list[str] | None  # None where the outputs are target columns (regression)
    num_outputs: int  # a score per class, or one output per target column

    def seed_epoch(self, seed: int) -> None:
        """Reseed the training loader's shuffling and augmentation for one epoch."""
        self.train.seed(seed)


class FixedBatches:
    """The same batches every epoch, in the same order (trainer.overfit_batches)."""

    def __init__(self, batches: list[Batch]):
        self.batches = batches
        # Whole, as a DeviceLoader's: what the run's data lineage describes and hashes.
        self.inputs = cat_inputs([inputs for inputs, _ in batches])
        self.targets = torch.cat([targets for _, targets in batches])

    def __len__(self) -> int:
        return len(self.batches)

    def seed(self, value: int) -> None:
        pass  # nothing is drawn: the batches are fixed

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)


def overfitting(data: DataBundle, batches: int, seed: int) -> DataBundle:
    """`data` with the first `batches` training batches (of the epoch `seed` draws) as its
    training, validation and test splits: what a model must learn by heart."""
    data.seed_epoch(seed)
    fixed = FixedBatches(list(itertools.islice(data.train, batches)))
    return replace(data, train=fixed, val=fixed, test=fixed)


def build_loaders(
    dataset,
    source: ImageTensors | FolderSplits,
    device: torch.device,
    *,
    seed: int = 0,
    channels_last: bool = False,
    ranks: Ranks = SINGLE,
    host: HostBatches | None = None,
) -> DataBundle:
    """Wrap a loaded dataset's splits in loaders for `device` (`dataset`: the run's
    `dataset` node); `channels_last`: batches in the memory layout of a channels_last conv
    net; `ranks`: this process's share of a distributed run (validation and test are split between
    the ranks without padding, so reduced sums count every sample once); `host`: how a
    DataLoader's batches become the loop's (HostBatches)."""
    generator = torch.Generator(device=device).manual_seed(seed)

    def transform(train: bool) -> BatchTransform:
        scale = dataset.resized_crop_scale
        augmentation = Augmentation(
            dataset.crop_padding, dataset.hflip, tuple(scale) if scale else None
        )
        return BatchTransform(
            dataset.mean,
            dataset.std,
            device,
            augment=augmentation if train and dataset.augment else None,
            channels_last=channels_last,
            generator=generator,
        )

    if source.input_shape is not None:
        check_channels(dataset, source.input_shape)
    if isinstance(source, ImageTensors):
        return _device_bundle(dataset, source, device, transform, generator, ranks)
    assert isinstance(source, FolderSplits), f"unexpected dataset source {type(source)}"
    return _host_bundle(dataset, source, device, transform, seed, ranks, host or HostBatches())


def check_channels(dataset, input_shape: tuple[int, ...]) -> None:
    """Per-channel `dataset.mean` / `dataset.std` of images: one number, or one per channel."""
    if len(input_shape) != 3:  # not C x H x W images: nothing is normalized per channel
        return
    channels = input_shape[0]
    for key in ("mean", "std"):
        values = getattr(dataset, key)
        if values is not None and len(values) not in (1, channels):
            raise ConfigValueError(
                f"dataset.{key}",
                list(values),
                f"null, one number, or one number per channel of these images ({channels})",
            )


def _device_bundle(
    dataset, source: ImageTensors, device, transform, generator, ranks
) -> DataBundle:
    inputs, targets = source.train_images, source.train_labels
    if source.val_images is not None and dataset.folds is None:  # a val/ folder of its own
        train = (inputs, targets)
        val = (source.val_images, source.val_labels)
    else:
        if source.val_images is not None:  # cross-validation folds cut train and val alike
            inputs = cat_inputs([inputs, source.val_images])
            targets = torch.cat([targets, source.val_labels])
        keep, held = held_out(dataset, len(targets), class_labels(targets))
        train = (map_inputs(lambda x: x[keep], inputs), targets[keep])
        val = (map_inputs(lambda x: x[held], inputs), targets[held])
    if dataset.train_on_val:
        train = (cat_inputs([train[0], val[0]]), torch.cat([train[1], val[1]]))

    def share(x):
        return rank_share(x, ranks)

    on_device = {  # each rank evaluates its share
        "train": train,
        "val": (map_inputs(share, val[0]), share(val[1])),
        "test": (map_inputs(share, source.test_images), share(source.test_labels)),
    }
    on_device = {
        k: (map_inputs(lambda t: t.to(device), x), y.to(device)) for k, (x, y) in on_device.items()
    }
    return DataBundle(
        train=DeviceLoader(
            *on_device["train"],
            dataset.batch_size,
            transform(True),
            shuffle=True,
            generator=generator,
            ranks=ranks,
        ),
        val=DeviceLoader(
            *on_device["val"], dataset.eval_batch_size, transform(False), shuffle=False
        ),
        test=DeviceLoader(
            *on_device["test"], dataset.eval_batch_size, transform(False), shuffle=False
        ),
        input_shape=source.input_shape,
        classes=source.classes,
        num_outputs=source.num_outputs,
    )


def held_out(dataset, n: int, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of the n training samples: the run's cross-validation fold
    (dataset.folds, stratified by `labels` where known), else its val_fraction split."""
    if dataset.folds is not None:
        return fold_split(n, dataset.folds, dataset.fold, dataset.split_seed, labels)
    return seeded_split(n, dataset.val_fraction, dataset.split_seed)


def _host_bundle(
    dataset, source: FolderSplits, device, transform, seed: int, ranks, batches: HostBatches
) -> DataBundle:
    train, val = source.train, source.val
    if val is not None and dataset.folds is not None:  # folds cut train and val alike
        train, val = ConcatDataset([train, val]), None
    if val is None:
        keep, held = held_out(dataset, len(train), class_labels(train))
        train, val = Subset(train, keep.tolist()), Subset(train, held.tolist())
    if dataset.train_on_val:
        train = ConcatDataset([train, val])
    workers = dataset.num_workers
    common = dict(
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        collate_fn=batches.collate_fn,
    )
    targets, layout = batches.targets, batches.layout

    def train_loader(ds) -> HostLoader:
        # The loader draws its workers' seed from the same generator before each epoch's
        # order, as a DataLoader that shuffles by itself does.
        gen = torch.Generator().manual_seed(seed)
        sampler = RankBatchSampler(
            len(ds), dataset.batch_size, shuffle=True, generator=gen, ranks=ranks
        )
        dl = DataLoader(ds, batch_sampler=sampler, generator=gen, **common)
        return HostLoader(dl, transform(True), device, targets, generator=gen, layout=layout)

    def eval_loader(ds) -> HostLoader:
        if ranks.world_size > 1:
            ds = Subset(ds, rank_share(range(len(ds)), ranks))
        dl = DataLoader(ds, batch_size=dataset.eval_batch_size, shuffle=False, **common)
        return HostLoader(dl, transform(False), device, targets, layout=layout)

    return DataBundle(
        train=train_loader(train),
        val=eval_loader(val),
        test=eval_loader(source.test),
        input_shape=source.input_shape,
        classes=source.classes,
        num_outputs=source.num_outputs,
    )
