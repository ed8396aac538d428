"""Config nodes to objects. Everything is `_target_`-instantiated; the code only supplies
what the config cannot know: the data's shape, the model's parameters, the optimizer."""

from __future__ import annotations

import inspect

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

# Scheduler keys that steer the loop rather than the scheduler's constructor.
SCHEDULER_CONTROL_KEYS = ("interval", "monitor")


def build_model(cfg: DictConfig, input_shape, num_classes: int) -> nn.Module:
    return instantiate(cfg, input_shape=tuple(input_shape), num_classes=num_classes)


def build_optimizer(cfg: DictConfig, model: nn.Module, device=None) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters; fused kernels on CUDA.

    A fused step updates every parameter in one kernel instead of several per tensor.
    """
    factory = instantiate(cfg)
    extra = {}
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda and "fused" in inspect.signature(factory.func).parameters:
        extra["fused"] = True
    return factory(model.parameters(), **extra)


def build_scheduler(cfg: DictConfig, optimizer, steps_per_epoch: int):
    node = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    factory = instantiate({k: v for k, v in node.items() if k not in SCHEDULER_CONTROL_KEYS})
    runtime = {}
    if "steps_per_epoch" in cfg and cfg.steps_per_epoch is None:
        runtime["steps_per_epoch"] = steps_per_epoch  # known only once the data is loaded
    return factory(optimizer, **runtime)


def scheduler_interval(cfg: DictConfig) -> str:
    return getattr(cfg.interval, "value", cfg.interval)


def is_convnet(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
