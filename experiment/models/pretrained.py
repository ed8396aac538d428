"""Models from timm, with pretrained weights found on this machine, and fine-tuning controls.

`model=timm model.name=resnet50` builds any timm architecture with the data's class count
and input channels. `model.pretrained=true` takes its weights from the local Hugging Face
cache or torch hub's checkpoint folder, never from the network (a run must not hang on a
download); `model.weights=FILE` takes them from a .safetensors or .pth file. The classifier
head is new (it has the data's classes); everything else is the pretrained network.

Freezing: `freeze_backbone` stops gradients to everything but the head and keeps the
backbone's batch-norm layers in eval mode (their running statistics stay those of the
pretrained weights); `unfreeze_backbone` undoes both.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from experiment.config.fine_tuning import fine_tuned
from experiment.errors import ConfigError, ConfigValueError
from experiment.models.nets import image_shape

log = logging.getLogger(__name__)
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def timm_classifier(
    input_shape: tuple[int, int, int],
    num_classes: int,
    name: str,
    pretrained: bool = False,
    weights: str | None = None,
    dropout: float = 0.0,
    freeze_backbone: bool = False,
    unfreeze_at_epoch: int | None = None,  # read by the run (an epoch callback)
) -> nn.Module:
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise ConfigValueError(
            "model.name",
            name,
            "a timm architecture, e.g. resnet50 or vit_small_patch16_224 "
            "(timm.list_models() lists them)",
        )
    channels = image_shape(input_shape, f"timm ({name})")[0]
    source = weights_file(name, weights) if pretrained or weights else None
    model = timm.create_model(
        name,
        pretrained=source is not None,
        pretrained_cfg_overlay={"state_dict": _state_dict(source)} if source else None,
        num_classes=num_classes,
        in_chans=channels,
        drop_rate=dropout,
    )
    if source is not None:
        log.info("Pretrained weights for %s: %s", name, source)
    if freeze_backbone:
        freeze(model)
    return model


def weights_file(name: str, weights: str | None) -> Path:
    """The file holding `name`'s pretrained weights: `weights` if given, else the one in
    the local Hugging Face cache or torch hub's checkpoints. ConfigError if there is none."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigValueError(
                "model.weights", weights, "an existing .safetensors or .pth file"
            )
        return path
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    looked = []
    if cfg is not None and cfg.hf_hub_id:
        for filename in (cfg.hf_hub_filename, *_WEIGHT_FILES):
            found = filename and try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
        looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE} (repo {cfg.hf_hub_id})")
    if cfg is not None and cfg.url:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if hub_file.is_file():
            return hub_file
        looked.append(f"torch hub's {hub_file}")
    where = " and ".join(looked) or "nowhere: timm lists no pretrained weights for it"
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{name}"
    raise ConfigError(
        f"No pretrained weights for timm model '{name}' on this machine (looked in {where}); "
        f"runs never download. Fetch them where there is a network (`hf download {repo}`, "
        "then copy the cache folder here) or give a file: model.weights=/path/to/weights."
        "safetensors"
    )


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file as a state dict: safetensors, or a torch file read with
    weights_only=True (a checkpoint's `model` entry, or a bare state dict)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigValueError(
            "model.weights", str(path), f"a readable weights file ({type(err).__name__}: {err})"
        ) from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def head(model: nn.Module) -> nn.Module:
    """The classifier head of a timm model."""
    if not hasattr(model, "get_classifier"):
        raise ConfigError(
            "Fine-tuning controls (model.freeze_backbone, optimizer.backbone_lr_scale) need a "
            "model with a classifier head: model=timm"
        )
    return model.get_classifier()


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head_ids = {id(p) for p in head(model).parameters()}
    return [p for p in model.parameters() if id(p) not in head_ids]


def _keep_in_eval(module: nn.Module, _inputs) -> None:
    """Forward pre-hook of a frozen batch-norm layer: normalize with the running
    statistics, and leave them unchanged, even while the model trains."""
    module.training = False


def freeze(model: nn.Module) -> None:
    head_ids = {id(m) for m in head(model).modules()}
    for parameter in backbone_parameters(model):
        parameter.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and id(module) not in head_ids:
            module.register_forward_pre_hook(_keep_in_eval)


def unfreeze(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    for module in model.modules():
        hooks = module._forward_pre_hooks
        for key in [k for k, hook in hooks.items() if hook is _keep_in_eval]:
            del hooks[key]


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class UnfreezeBackbone:
    """Epoch callback for `model.unfreeze_at_epoch=N`: the whole model trains from epoch N
    (1-based: after N-1 epochs with the backbone frozen)."""

    def __init__(self, model: nn.Module, epoch: int, on_unfreeze=None):
        """`on_unfreeze(trainable parameter count, first epoch that trains them)`."""
        self.model, self.epoch, self.on_unfreeze, self.done = model, epoch, on_unfreeze, False

    def __call__(self, state) -> None:
        if not self.done and state.epoch + 2 >= self.epoch:  # the next epoch is epoch N
            unfreeze(self.model)
            self.done = True
            log.info("Backbone unfrozen: the whole model trains from epoch %s", state.epoch + 2)
            if self.on_unfreeze is not None:
                self.on_unfreeze(trainable_parameters(self.model), state.epoch + 1)


def thaw_callbacks(model_conf, model: nn.Module, state, on_unfreeze) -> list:
    """The callback of `model.unfreeze_at_epoch` (on every rank), if set; a run resumed
    past that epoch has its backbone unfrozen before it goes on."""
    if not fine_tuned(model_conf) or model_conf.unfreeze_at_epoch is None:
        return []
    callback = UnfreezeBackbone(model, model_conf.unfreeze_at_epoch, on_unfreeze)
    if state is not None:
        callback(state)
    return [callback]
