"""Structured-config schemas: the types and the defaults of every config node.

One rule for defaults: each value is written once, here. The option files under conf/
name their schema first in their defaults list and state only what that option changes,
so a key the schema does not know or a value of the wrong type is rejected by Hydra
before the run starts. Value ranges a type cannot express are in `experiment.rules`.
`python -m experiment.train --cfg job` prints the composed result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING


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


class Normalization(Enum):
    dataset = "dataset"  # dataset.mean / dataset.std as configured
    model = "model"  # the input size, mean and std the model's pretrained weights expect


class InitScheme(Enum):
    default = "default"  # PyTorch's own per-layer initialisation
    kaiming = "kaiming"
    xavier = "xavier"
    normal = "normal"


# --------------------------------------------------------------------------- top level


@dataclass
class EarlyStoppingConf:
    patience: int | None = None  # epochs without improvement before stopping; null: never
    min_delta: float = 0.0  # a smaller change of the optimized metric is no improvement


@dataclass
class RegularizationConf:
    """The knobs live here alone; the nodes that act on them interpolate them
    (`model.dropout`, `optimizer.weight_decay`, `dataset.augment`) or the run reads them."""

    dropout: float = 0.0
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global grad norm; null: no clipping
    augmentation: bool = False
    early_stopping: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)


@dataclass
class TrainerConf:
    epochs: int = 30
    device: Device = Device.auto
    precision: Precision = Precision.auto
    seed: int = 0
    deterministic: bool = False
    compile: bool = False  # torch.compile the model (worth it for long runs only)
    progress: Progress = Progress.auto
    checkpoint_dir: str = II("hydra:runtime.output_dir") + "/checkpoints"
    # Continue a killed run in its MLflow run: auto (the newest unfinished run with this
    # config, looked for under resume_dir), a checkpoint path, or null (always start anew).
    resume: str | None = None
    resume_dir: str | None = "outputs"
    # Under torchrun: seconds a rank waits for the others in a collective before the run
    # stops (a lost rank must not hang the rest); SyncBatchNorm across the GPUs (null: on
    # with several CUDA ranks; PyTorch's SyncBatchNorm runs on GPUs only).
    dist_timeout: float = 180.0
    sync_batchnorm: bool | None = None


@dataclass
class Config:
    dataset: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    regularization: RegularizationConf = field(default_factory=RegularizationConf)
    tracking: Any = MISSING
    task: Any = MISSING
    trainer: TrainerConf = field(default_factory=TrainerConf)
    # The objective the sweeper optimizes and early stopping / best checkpoint follow;
    # by default the task's (classification: val/acc, maximize; regression: val/mse,
    # minimize). Always a validation metric: the test split is only evaluated once, at the
    # end. A list makes a multi-objective sweep, e.g. [val/acc, model/params] with
    # optimized_direction [maximize, minimize]; the first entry picks the best epoch.
    optimized_metric: Any = II("task.metric")
    optimized_direction: Any = II("task.direction")  # maximize | minimize, or a list
    run_name: str | None = None  # MLflow run name; null: <model>-<optimizer>-lr<lr>


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
class SyntheticRegressionSource:
    _target_: str = "experiment.datasets.synthetic_regression"
    num_train: int = 2000
    num_test: int = 500
    features: int = 16
    targets: int = 1
    noise: float = 0.1
    seed: int = 0


@dataclass
class ImageFolderSource:
    _target_: str = "experiment.datasets.image_folder"
    path: str = MISSING
    image_size: int = 64
    channels: int = 3
    test_fraction: float = 0.2  # used only when there is no test/ subfolder
    seed: int = 0
    cache_dir: str | None = II("..cache_dir")
    cache_max_gb: float = II("..cache_max_gb")


@dataclass
class DatasetConf:
    name: str = MISSING
    batch_size: int = 128
    eval_batch_size: int = 1024
    val_fraction: float = 0.1  # share of the training split held out for validation
    # Share held out for testing from a source that returns no test split (a user's
    # source; the project's own sources have their own `source.test_fraction`).
    test_fraction: float = 0.2
    split_seed: int = 0  # the same splits for every trainer.seed: runs compare on one set
    mean: list[float] | None = MISSING  # null: no per-channel normalization
    std: list[float] | None = MISSING
    augment: bool = II("regularization.augmentation")
    crop_padding: int = 2  # random-crop padding in pixels when augmenting
    hflip: bool = False  # random horizontal flips when augmenting
    # Random-resized crops when augmenting: [min, max] share of the image area kept (then
    # resized back), as for photos; null: off.
    resized_crop_scale: list[float] | None = None
    normalization: Normalization = Normalization.dataset
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
class SyntheticRegressionDatasetConf(DatasetConf):
    source: SyntheticRegressionSource = field(default_factory=SyntheticRegressionSource)


@dataclass
class ImageFolderDatasetConf(DatasetConf):
    source: ImageFolderSource = field(default_factory=ImageFolderSource)
    # Images decoded once into a uint8 cache here (relative: to where the command runs),
    # then served from the training device; null: decode every epoch (DataLoader path).
    cache_dir: str | None = ".cache/image_folders"
    cache_max_gb: float = 8.0  # a larger cache falls back to the DataLoader path


# --------------------------------------------------------------------------- model


@dataclass
class ModelConf:
    _target_: str = MISSING
    dropout: float = II("regularization.dropout")
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
    batch_norm: bool = True
    init: InitScheme = InitScheme.kaiming


@dataclass
class ResNet18Conf(ModelConf):
    _target_: str = "experiment.models.ResNet18"


@dataclass
class TimmConf:
    _target_: str = "experiment.pretrained.timm_classifier"
    name: str = "resnet50"  # any timm architecture (timm.list_models())
    pretrained: bool = False  # weights from the local Hugging Face / torch hub cache
    weights: str | None = None  # or from this .safetensors / .pth file
    dropout: float = II("regularization.dropout")
    freeze_backbone: bool = False  # train the classifier head only
    unfreeze_at_epoch: int | None = None  # with freeze_backbone: train everything from epoch N


# --------------------------------------------------------------------------- optimizer


@dataclass
class OptimizerConf:
    _target_: str = MISSING
    _partial_: bool = True  # completed with the model's parameters in code
    _convert_: str = "all"  # plain lists in param_groups keep checkpoints weights_only-loadable
    lr: float = 1e-3
    weight_decay: float = II("regularization.weight_decay")
    # The backbone's learning rate as a share of lr (the head keeps lr); null: one rate.
    backbone_lr_scale: float | None = None


@dataclass
class AdamConf(OptimizerConf):
    _target_: str = "torch.optim.Adam"  # weight decay as an L2 penalty on the gradient
    lr: float = 3e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"  # decoupled weight decay


@dataclass
class SGDConf(OptimizerConf):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True


@dataclass
class RMSpropConf(OptimizerConf):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.0


# --------------------------------------------------------------------------- scheduler
# A scheduler option is two things kept apart: how the loop drives the schedule
# (`interval`, `monitor`) and the schedule itself (`schedule`, a torch.optim.lr_scheduler
# node completed with the optimizer in code; null: a constant learning rate).


@dataclass
class ScheduleConf:
    _target_: str = MISSING
    _partial_: bool = True


@dataclass
class StepScheduleConf(ScheduleConf):
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class CosineScheduleConf(ScheduleConf):
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = II("trainer.epochs")
    eta_min: float = 0.0


@dataclass
class PlateauScheduleConf(ScheduleConf):
    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    mode: str = "min"  # min for losses, max for accuracies
    factor: float = 0.1
    patience: int = 3
    threshold: float = 1e-4


@dataclass
class OneCycleScheduleConf(ScheduleConf):
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    max_lr: float = II("optimizer.lr")
    epochs: int = II("trainer.epochs")
    steps_per_epoch: int | None = None  # null: taken from the data at run time
    pct_start: float = 0.3


@dataclass
class SchedulerConf:
    interval: Interval = Interval.epoch  # step the schedule after each epoch or each batch
    schedule: Any = None


@dataclass
class ConstantSchedulerConf(SchedulerConf):
    pass


@dataclass
class StepSchedulerConf(SchedulerConf):
    schedule: StepScheduleConf = field(default_factory=StepScheduleConf)


@dataclass
class CosineSchedulerConf(SchedulerConf):
    schedule: CosineScheduleConf = field(default_factory=CosineScheduleConf)


@dataclass
class PlateauSchedulerConf(SchedulerConf):
    monitor: str = "val/loss"  # the epoch metric the schedule watches
    schedule: PlateauScheduleConf = field(default_factory=PlateauScheduleConf)


@dataclass
class OneCycleSchedulerConf(SchedulerConf):
    interval: Interval = Interval.step
    schedule: OneCycleScheduleConf = field(default_factory=OneCycleScheduleConf)


# --------------------------------------------------------------------------- task


@dataclass
class ClassificationTaskConf:
    _target_: str = "experiment.tasks.Classification"
    # cross_entropy | nll (a model ending in log-softmax) | bce_with_logits (multi-label
    # 0/1 targets), or a node with _target_ (any loss of (outputs, targets)).
    loss: Any = "cross_entropy"
    label_smoothing: float = II("regularization.label_smoothing")
    metric: str = "val/acc"  # the default objective (optimized_metric)
    direction: str = "maximize"


@dataclass
class RegressionTaskConf:
    _target_: str = "experiment.tasks.Regression"
    loss: Any = "mse"  # mse | l1 | smooth_l1, or a node with _target_
    metric: str = "val/mse"
    direction: str = "minimize"


# --------------------------------------------------------------------------- tracking


@dataclass
class TrackingConf:
    enabled: bool = True
    # Relative paths are taken from the directory the command runs in. A server works
    # too: tracking.uri=http://127.0.0.1:5000
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment_name: str = "default"
    log_model: bool = True  # the best-validation model, with mlflow.pytorch.log_model
    log_plots: bool = True  # learning curves and test confusion matrix, PNG under plots/
    # pt2: an exported graph, portable; pickle: the nn.Module itself, trainable when
    # loaded (needs this package importable) and faster to log (see BENCHMARKS.md).
    model_format: ModelFormat = ModelFormat.pt2


SCHEMAS: dict[str, dict[str, type]] = {
    "dataset": {
        "digits": DigitsDatasetConf,
        "torchvision": TorchvisionDatasetConf,
        "synthetic": SyntheticDatasetConf,
        "synthetic_regression": SyntheticRegressionDatasetConf,
        "image_folder": ImageFolderDatasetConf,
    },
    "model": {"mlp": MLPConf, "cnn": CNNConf, "resnet18": ResNet18Conf, "timm": TimmConf},
    "optimizer": {
        "adam": AdamConf,
        "adamw": AdamWConf,
        "sgd": SGDConf,
        "rmsprop": RMSpropConf,
    },
    "scheduler": {
        "constant": ConstantSchedulerConf,
        "step": StepSchedulerConf,
        "cosine": CosineSchedulerConf,
        "plateau": PlateauSchedulerConf,
        "onecycle": OneCycleSchedulerConf,
    },
    "tracking": {"tracking": TrackingConf},
    "task": {"classification": ClassificationTaskConf, "regression": RegressionTaskConf},
}


def dataset_defaults() -> dict:
    """What a dataset option of a user's own folder leaves out, it gets from here: an
    option states its `source` (and, say, `batch_size`) and nothing else. No mean and
    std: inputs are normalized only where configured."""
    defaults = {
        name: f.default.value if isinstance(f.default, Enum) else f.default
        for name, f in DatasetConf.__dataclass_fields__.items()
        if f.default is not MISSING
    }
    return {**defaults, "name": "custom", "mean": None, "std": None}


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore; option files extend them by name."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            # Under schema/<group>, not <group>, so `model=...` lists only real options.
            store.store(group=f"schema/{group}", name=name, node=node)
