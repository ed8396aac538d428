"""Settings checked against what only the loaded data and the built model tell: before
the first epoch, so a combination that would crash mid-training (or exhaust memory) is one
line naming the key. The config-only rules are `experiment.config.rules`."""

from __future__ import annotations

from torch import nn

from experiment.errors import ConfigError, ConfigValueError, DataError

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def check_augmentation(dataset, input_shape) -> None:
    """Random-crop padding larger than the images: every batch would be padded into a
    tensor many times its size (a padding of 10^5 asks for terabytes)."""
    if not dataset.augment or input_shape is None or len(input_shape) != 3:
        return
    side = max(input_shape[1:])
    if dataset.crop_padding > side:
        raise ConfigValueError(
            "dataset.crop_padding", dataset.crop_padding, f"at most the images' size ({side})"
        )


def check_model(model: nn.Module, model_key: str, batch_size: int, world_size: int) -> None:
    """A model with something to train, and batch norm given batches it can normalize."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"The model ({model_key}) has no trainable parameters: the optimizer would have "
            "nothing to train. Give it layers with weights (or unfreeze some)."
        )
    per_rank = batch_size // max(world_size, 1)
    if per_rank < 2 and any(isinstance(m, _BATCH_NORMS) for m in model.modules()):
        raise ConfigValueError(
            "dataset.batch_size",
            batch_size,
            f"at least {2 * max(world_size, 1)} (2 per rank) with a model that has batch "
            "norm, which cannot normalize a batch of one sample",
        )


def check_schedule(scheduler, steps_per_epoch: int) -> None:
    """A one-cycle schedule given fewer steps per epoch than an epoch has batches."""
    given = getattr(scheduler.schedule, "steps_per_epoch", None)
    if given is not None and given < steps_per_epoch:
        raise ConfigValueError(
            "scheduler.schedule.steps_per_epoch",
            given,
            f"null (taken from the data) or at least {steps_per_epoch}, the batches of an "
            "epoch: OneCycleLR refuses a step past its total",
        )


def check_splits(data) -> None:
    """Every split has a batch: a small source can leave a split empty once the validation
    and test samples are held out."""
    for split in ("train", "val", "test"):
        if len(getattr(data, split)) == 0:
            raise DataError(
                f"The {split} split holds no samples once the data is split: give the source "
                "more samples (or lower dataset.val_fraction / dataset.test_fraction)."
            )
