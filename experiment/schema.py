"""Structured-config schemas and value checks.

The YAML under conf/ holds the values; these dataclasses hold the types. Each option
file names its schema first in its defaults list, so a key the schema does not know or a
value of the wrong type is rejected by Hydra before the run starts. Value ranges that a
type cannot express are checked by `validate` before any data is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiment.errors import ConfigError, ConfigValueError


class Progress(Enum):
    auto = "auto"  # a bar on a terminal, plain lines otherwise
    bar = "bar"
    lines = "lines"
    quiet = "quiet"


class Device(Enum):
    auto = "auto"  # CUDA when present, else CPU
    cpu = "cpu"
    cuda = "cuda"


class Precision(Enum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"


class Direction(Enum):
    maximize = "maximize"
    minimize = "minimize"


class Interval(Enum):
    epoch = "epoch"
    step = "step"


class ModelFormat(Enum):
    pt2 = "pt2"
    pickle = "pickle"


class InitScheme(Enum):
    default = "default"  # PyTorch's own per-layer initialisation
    kaiming = "kaiming"
    xavier = "xavier"
    normal = "normal"


# --------------------------------------------------------------------------- top level


@dataclass
class EarlyStoppingConf:
    patience: int | None = None  # epochs without improvement before stopping; null: never
    min_delta: float = 0.0


@dataclass
class RegularizationConf:
    dropout: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global grad norm; null: no clipping
    augmentation: bool = False
    early_stopping: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)


@dataclass
class TrainerConf:
    epochs: int = 20
    device: Device = Device.auto
    precision: Precision = Precision.auto
    seed: int = 0
    deterministic: bool = False
    compile: bool = False
    grad_clip: float | None = None
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    early_stopping_min_delta: float = 0.0
    checkpoint_dir: str = "checkpoints"
    resume: str | None = None
    progress: Progress = Progress.auto
    resume_dir: str | None = "outputs"


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    regularization: RegularizationConf = field(default_factory=RegularizationConf)
    tracking: Any = MISSING
    trainer: TrainerConf = field(default_factory=TrainerConf)
    optimized_metric: str = "val/acc"
    optimized_direction: Direction = Direction.maximize
    run_name: str | None = None


# --------------------------------------------------------------------------- dataset


@dataclass
class DigitsSource:
    _target_: str = "experiment.datasets.digits"
    test_fraction: float = 0.2
    seed: int = 0


@dataclass
class TorchvisionSource:
    _target_: str = MISSING
    root: str = "data"
    download: bool = False


@dataclass
class SyntheticSource:
    _target_: str = "experiment.datasets.synthetic"
    num_train: int = 2000
    num_test: int = 500
    channels: int = 1
    height: int = 28
    width: int = 28
    num_classes: int = 10
    noise: float = 0.5
    seed: int = 0


@dataclass
class ImageFolderSource:
    _target_: str = "experiment.datasets.image_folder"
    path: str = MISSING
    image_size: int = 64
    channels: int = 3
    test_fraction: float = 0.2  # used only when there is no test/ subfolder
    seed: int = 0


@dataclass
class DatasetConf:
    name: str = MISSING
    batch_size: int = 128
    eval_batch_size: int = 1024
    val_fraction: float = 0.1  # share of the training split held out for validation
    split_seed: int = 0
    mean: list[float] = MISSING
    std: list[float] = MISSING
    augment: bool = False
    crop_padding: int = 0  # random-crop padding in pixels when augmenting
    hflip: bool = False  # random horizontal flips when augmenting (not for digits)
    num_workers: int = 0  # DataLoader workers (image_folder only)


@dataclass
class DigitsDatasetConf(DatasetConf):
    source: DigitsSource = field(default_factory=DigitsSource)


@dataclass
class TorchvisionDatasetConf(DatasetConf):
    source: TorchvisionSource = field(default_factory=TorchvisionSource)


@dataclass
class SyntheticDatasetConf(DatasetConf):
    source: SyntheticSource = field(default_factory=SyntheticSource)


@dataclass
class ImageFolderDatasetConf(DatasetConf):
    source: ImageFolderSource = field(default_factory=ImageFolderSource)


# --------------------------------------------------------------------------- model


@dataclass
class ModelConf:
    _target_: str = MISSING
    dropout: float = 0.0
    init: InitScheme = InitScheme.default
    init_std: float = 0.02  # for init=normal


@dataclass
class MLPConf(ModelConf):
    _target_: str = "experiment.models.MLP"
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 256])
    batch_norm: bool = False


@dataclass
class CNNConf(ModelConf):
    _target_: str = "experiment.models.CNN"
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    hidden_size: int = 128
    batch_norm: bool = False


@dataclass
class ResNet18Conf(ModelConf):
    _target_: str = "experiment.models.ResNet18"


# --------------------------------------------------------------------------- optimizer


@dataclass
class OptimizerConf:
    _target_: str = MISSING
    _partial_: bool = True  # completed with the model's parameters in code
    _convert_: str = "all"  # plain lists in param_groups keep checkpoints weights_only-loadable
    lr: float = 1e-3
    weight_decay: float = 0.0


@dataclass
class AdamConf(OptimizerConf):
    _target_: str = "torch.optim.Adam"
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"


@dataclass
class SGDConf(OptimizerConf):
    _target_: str = "torch.optim.SGD"
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class RMSpropConf(OptimizerConf):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0


# --------------------------------------------------------------------------- scheduler


@dataclass
class SchedulerConf:
    _target_: str = MISSING
    _partial_: bool = True  # completed with the optimizer in code
    interval: Interval = Interval.epoch  # step the schedule after each epoch or each batch


@dataclass
class ConstantConf(SchedulerConf):
    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    factor: float = 1.0
    total_iters: int = 0


@dataclass
class StepConf(SchedulerConf):
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class CosineConf(SchedulerConf):
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = MISSING
    eta_min: float = 0.0


@dataclass
class PlateauConf(SchedulerConf):
    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    monitor: str = "val/loss"  # the epoch metric the schedule watches
    mode: str = "min"
    factor: float = 0.1
    patience: int = 3
    threshold: float = 1e-4


@dataclass
class OneCycleConf(SchedulerConf):
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    interval: Interval = Interval.step
    max_lr: float = MISSING
    epochs: int = MISSING
    steps_per_epoch: int | None = None  # filled in from the data at run time
    pct_start: float = 0.3


# --------------------------------------------------------------------------- tracking


@dataclass
class TrackingConf:
    enabled: bool = True
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment_name: str = "default"
    log_model: bool = True
    log_plots: bool = True  # learning curves and test confusion matrix, PNG under plots/
    # pt2: an exported graph, portable, ~0.6 s to log; pickle: the nn.Module itself,
    # trainable when loaded (needs this package importable), ~0.07 s to log.
    model_format: ModelFormat = ModelFormat.pt2


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
        "digits": DigitsDatasetConf,
        "torchvision": TorchvisionDatasetConf,
        "synthetic": SyntheticDatasetConf,
        "image_folder": ImageFolderDatasetConf,
    },
    "model": {"mlp": MLPConf, "cnn": CNNConf, "resnet18": ResNet18Conf},
    "optimizer": {
        "adam": AdamConf,
        "adamw": AdamWConf,
        "sgd": SGDConf,
        "rmsprop": RMSpropConf,
    },
    "scheduler": {
        "constant": ConstantConf,
        "step": StepConf,
        "cosine": CosineConf,
        "plateau": PlateauConf,
        "onecycle": OneCycleConf,
    },
    "tracking": {"tracking": TrackingConf},
}


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore; option files extend them by name."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            # Under schema/<group>, not <group>, so `model=...` lists only real options.
            store.store(group=f"schema/{group}", name=name, node=node)


# --------------------------------------------------------------------------- value checks


def _positive(v) -> bool:
    return v > 0 and math.isfinite(v)


def _at_least_one(v) -> bool:
    return v >= 1


def _unit_open_right(v) -> bool:
    return 0 <= v < 1


def _unit_open(v) -> bool:
    return 0 < v < 1


def _non_negative(v) -> bool:
    return v >= 0 and math.isfinite(v)


def _all_positive(v) -> bool:
    return len(v) > 0 and all(x >= 1 for x in v)


# (key, check, what is allowed). Keys absent from the composed config are skipped, so
# one table serves every combination of group options.
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("optimizer.lr", _positive, "a finite number > 0"),
    ("optimizer.weight_decay", _non_negative, "a number >= 0"),
    ("optimizer.momentum", _unit_open_right, "a number in [0, 1)"),
    ("dataset.batch_size", _at_least_one, "an integer >= 1"),
    ("dataset.eval_batch_size", _at_least_one, "an integer >= 1"),
    ("dataset.val_fraction", _unit_open, "a number strictly between 0 and 1"),
    ("dataset.crop_padding", lambda v: v >= 0, "an integer >= 0"),
    ("dataset.num_workers", lambda v: v >= 0, "an integer >= 0"),
    ("dataset.std", lambda v: len(v) > 0 and all(x > 0 for x in v), "a list of numbers > 0"),
    ("dataset.source.test_fraction", _unit_open, "a number strictly between 0 and 1"),
    ("dataset.source.num_train", lambda v: v >= 2, "an integer >= 2"),
    ("dataset.source.num_test", _at_least_one, "an integer >= 1"),
    ("dataset.source.num_classes", lambda v: v >= 2, "an integer >= 2"),
    ("dataset.source.channels", _at_least_one, "an integer >= 1"),
    ("dataset.source.height", _at_least_one, "an integer >= 1"),
    ("dataset.source.width", _at_least_one, "an integer >= 1"),
    ("dataset.source.image_size", _at_least_one, "an integer >= 1"),
    ("regularization.dropout", _unit_open_right, "a number in [0, 1)"),
    ("regularization.weight_decay", _non_negative, "a number >= 0"),
    ("regularization.label_smoothing", _unit_open_right, "a number in [0, 1)"),
    ("regularization.grad_clip", _positive, "null or a number > 0"),
    ("regularization.early_stopping.patience", _at_least_one, "null or an integer >= 1"),
    ("model.dropout", _unit_open_right, "a number in [0, 1)"),
    ("model.hidden_sizes", _all_positive, "a non-empty list of integers >= 1"),
    ("model.channels", _all_positive, "a non-empty list of integers >= 1"),
    ("model.kernel_size", _at_least_one, "an integer >= 1"),
    ("model.hidden_size", _at_least_one, "an integer >= 1"),
    ("model.init_std", _positive, "a number > 0"),
    ("trainer.epochs", _at_least_one, "an integer >= 1"),
    ("scheduler.step_size", _at_least_one, "an integer >= 1"),
    ("scheduler.gamma", _positive, "a number > 0"),
    ("scheduler.T_max", _at_least_one, "an integer >= 1"),
    ("scheduler.max_lr", _positive, "a number > 0"),
    ("scheduler.pct_start", _unit_open, "a number strictly between 0 and 1"),
    ("scheduler.factor", lambda v: 0 < v <= 1, "a number in (0, 1]"),
]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigValueError for a missing value or the first value out of range."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"Missing value for '{missing[0]}': it has no default. "
            f"Set it on the command line: {missing[0]}=<value>"
        )
    for key, check, allowed in RULES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:  # absent in this composition, or an allowed null
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not check(value):
            raise ConfigValueError(key, value, allowed)
    metric = cfg.optimized_metric
    if not metric.startswith("val/"):
        raise ConfigValueError(
            "optimized_metric",
            metric,
            "a validation metric such as 'val/acc' or 'val/loss' "
            "(the test split is never used for selection)",
        )
