"""Fine-tuning settings of a timm model checked, and the data matched to its pretrained
weights (`dataset.normalization=model`), where the config enters: before any data loads."""

from __future__ import annotations

import logging

from experiment.config.schema import TimmConf
from experiment.errors import ConfigValueError

log = logging.getLogger(__name__)


def data_config(name: str) -> dict:
    """Input size, mean and std the model's pretrained weights expect (timm's data config)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigValueError(
            "dataset.normalization",
            "model",
            f"'dataset' for {name}: timm has no data config for it",
        )
    return {"input_size": tuple(cfg.input_size), "mean": list(cfg.mean), "std": list(cfg.std)}


def fine_tuned(model_conf) -> bool:
    """Whether the model node is a timm model (the one with fine-tuning controls)."""
    return isinstance(model_conf, TimmConf)


def check_fine_tuning(model_conf) -> None:
    """`model.unfreeze_at_epoch` says when a frozen backbone thaws: it needs one."""
    thaws = fine_tuned(model_conf) and model_conf.unfreeze_at_epoch is not None
    if thaws and not model_conf.freeze_backbone:
        raise ConfigValueError(
            "model.unfreeze_at_epoch",
            model_conf.unfreeze_at_epoch,
            "null unless model.freeze_backbone=true (it says when a frozen backbone thaws)",
        )


def check_fine_tuning_on(model_conf, distributed: bool) -> None:
    """DDP fixes the set of trained parameters when it starts: no thawing under torchrun."""
    if distributed and fine_tuned(model_conf) and model_conf.unfreeze_at_epoch is not None:
        raise ConfigValueError(
            "model.unfreeze_at_epoch",
            model_conf.unfreeze_at_epoch,
            "null under torchrun (DDP fixes the set of trained parameters when it starts): "
            "train with the backbone frozen, or train the whole model",
        )


def match_data_to_model(dataset, model_conf) -> None:
    """`dataset.normalization=model`: the dataset's mean and std, and an image folder's
    size, become those the model's pretrained weights expect (timm's data config)."""
    if dataset.normalization != "model":
        return
    if not fine_tuned(model_conf):
        raise ConfigValueError(
            "dataset.normalization",
            "model",
            "'dataset' unless model=timm (only timm models "
            "carry the data config of their pretrained weights)",
        )
    name = model_conf.name
    data = data_config(name)
    channels = len(dataset.mean or data["mean"])  # one entry per channel of the data
    if channels != len(data["mean"]):  # e.g. grey images for an RGB model: the average
        data["mean"] = [sum(data["mean"]) / len(data["mean"])] * channels
        data["std"] = [sum(data["std"]) / len(data["std"])] * channels
    dataset.mean, dataset.std = data["mean"], data["std"]
    size = data["input_size"][-1]
    sized = hasattr(dataset.source, "image_size")
    if sized:
        dataset.source.image_size = size
    log.info(
        "dataset.normalization=model: %s expects mean %s, std %s%s",
        name,
        data["mean"],
        data["std"],
        f", {size}px images" if sized else "",
    )
