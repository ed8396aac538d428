"""Structured-config schemas: the types and the defaults of every config node.

One rule for defaults: each value is written once, here. The option files under conf/
name their schema first in their defaults list and state only what that option changes,
so a key the schema does not know or a value of the wrong type is rejected by Hydra
before the run starts. Each field declares the values it allows beside its default
(`experiment.config.allowed`): they are checked from there, before any data is loaded. Enums
are `str` enums: code past the config's entry compares them with plain strings.
`python -m experiment.train --cfg job` prints the composed result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING

from experiment.config.allowed import (
    AREA_SHARE,
    AT_LEAST_ONE,
    AT_LEAST_TWO,
    FINITE_LIST,
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_FINITE,
    POSITIVE_LIST,
    SECONDS,
    SIZES,
    UNIT_OPEN,
    UNIT_OPEN_LEFT,
    UNIT_OPEN_RIGHT,
    Rule,
    allowed,
    number,
)


class Choice(str, Enum):
    """An enum whose members are their strings: `Device.cuda == "cuda"`, f"{x}" is "cuda"."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Progress(Choice):
    auto = "auto"  # a bar on a terminal, plain lines otherwise
    bar = "bar"
    lines = "lines"
    quiet = "quiet"


class Device(Choice):
    auto = "auto"  # CUDA when present, else CPU
    cpu = "cpu"
    cuda = "cuda"


class Precision(Choice):
    auto = "auto"  # bf16 autocast on CUDA, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"


class Direction(Choice):
    maximize = "maximize"
    minimize = "minimize"


class Interval(Choice):
    epoch = "epoch"
    step = "step"


class ModelFormat(Choice):
    pt2 = "pt2"
    pickle = "pickle"


class Normalization(Choice):
    dataset = "dataset"  # dataset.mean / dataset.std as configured
    model = "model"  # the input size, mean and std the model's pretrained weights expect


class InitScheme(Choice):
    default = "default"  # PyTorch's own per-layer initialisation
    kaiming = "kaiming"
    xavier = "xavier"
    normal = "normal"


# --------------------------------------------------------------------------- top level

SEED = Rule(number(0, 2**32 - 1), "an integer in [0, 2**32 - 1] (what NumPy seeds take)")
BETAS = Rule(
    lambda v: len(v) == 2 and all(number(0, 1, high_open=True)(b) for b in v),
    "[beta1, beta2], each in [0, 1)",
)
THAW_EPOCH = Rule(number(2), "an integer >= 2 (the first epoch that trains the whole model)")


@dataclass
class EarlyStoppingConf:
    # Epochs without improvement before stopping; null: never.
    patience: int | None = allowed(None, AT_LEAST_ONE)
    # A smaller change of the optimized metric is no improvement.
    min_delta: float = allowed(0.0, NON_NEGATIVE)


@dataclass
class RegularizationConf:
    """The knobs live here alone; the nodes that act on them interpolate them
    (`model.dropout`, `optimizer.weight_decay`, `dataset.augment`) or the run reads them."""

    dropout: float = allowed(0.0, UNIT_OPEN_RIGHT)
    weight_decay: float = allowed(0.0, NON_NEGATIVE)
    label_smoothing: float = allowed(0.0, UNIT_OPEN_RIGHT)
    # Max global grad norm; null: no clipping.
    grad_clip: float | None = allowed(None, POSITIVE_FINITE)
    augmentation: bool = False
    early_stopping: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)


@dataclass
class EMAConf:
    """An exponential moving average of the weights (`trainer.ema.decay`, null: off): it is
    what validation, the best checkpoint, the test split and the logged model use."""

    decay: float | None = allowed(None, UNIT_OPEN)  # e.g. 0.999; per optimizer step
    start_epoch: int = allowed(1, AT_LEAST_ONE)  # the first epoch whose steps it averages


@dataclass
class TrainerConf:
    epochs: int = allowed(30, AT_LEAST_ONE)
    # Batches whose gradients are summed into one optimizer step (a batch N times larger
    # where it does not fit in memory); schedules count optimizer steps.
    accumulate_grad_batches: int = allowed(1, AT_LEAST_ONE)
    ema: EMAConf = field(default_factory=EMAConf)
    # Batches of each split per epoch (null: all): the whole path in seconds (debug=fast).
    limit_batches: int | None = allowed(None, AT_LEAST_ONE)
    # torch.autograd's anomaly mode: a NaN is named by the operation that made it (slow).
    detect_anomaly: bool = False
    # Train, validate and test on the first N training batches, the same each epoch, until
    # the training loss is at most overfit_loss (debug=overfit): a model, loss and data
    # that work can learn a few batches by heart; one that cannot has a bug.
    overfit_batches: int | None = allowed(None, AT_LEAST_ONE)
    overfit_loss: float = allowed(0.01, POSITIVE_FINITE)
    # torch.profiler over this many training steps after one warm-up step (debug=profile):
    # a Chrome/Perfetto trace and a table of the operators' times, in the run's folder
    # and its MLflow artifacts (profile/).
    profile_steps: int | None = allowed(None, AT_LEAST_ONE)
    device: Device = Device.auto
    precision: Precision = Precision.auto
    seed: int = allowed(0, SEED)
    deterministic: bool = False
    compile: bool = False  # torch.compile the model (worth it for long runs only)
    progress: Progress = Progress.auto
    checkpoint_dir: str = II("hydra:runtime.output_dir") + "/checkpoints"
    # Continue a killed run in its MLflow run: auto (the newest unfinished run with this
    # config, looked for under resume_dir), a checkpoint path, or null (always start anew).
    resume: str | None = None
    resume_dir: str | None = "outputs"
    # Under torchrun: seconds a rank waits for the others in a collective before the run
    # stops (a lost rank must not hang the rest).
    dist_timeout: float = allowed(180.0, SECONDS)
    # SyncBatchNorm across the GPUs (null: on with several CUDA ranks; PyTorch's
    # SyncBatchNorm runs on GPUs only).
    sync_batchnorm: bool | None = None


@dataclass
class Config:
    """The composed run. Groups whose options all share a base are typed by it (an option
    is one of its subclasses, or a user's dict checked against it); models, optimizers and
    tasks are any `_target_` with the keys that target takes."""

    dataset: DatasetConf = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: SchedulerConf = MISSING
    regularization: RegularizationConf = field(default_factory=RegularizationConf)
    tracking: TrackingConf = MISSING
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
    _target_: str = "experiment.data.datasets.digits"
    test_fraction: float = allowed(0.2, UNIT_OPEN)
    seed: int = allowed(0, SEED)


@dataclass
class TorchvisionSource:
    _target_: str = MISSING
    root: str = "data"
    download: bool = False


@dataclass
class SyntheticSource:
    _target_: str = "experiment.data.datasets.synthetic"
    num_train: int = allowed(2000, AT_LEAST_TWO)
    num_test: int = allowed(500, AT_LEAST_ONE)
    channels: int = allowed(1, AT_LEAST_ONE)
    height: int = allowed(28, AT_LEAST_ONE)
    width: int = allowed(28, AT_LEAST_ONE)
    num_classes: int = allowed(10, AT_LEAST_TWO)
    noise: float = allowed(0.5, NON_NEGATIVE)
    seed: int = allowed(0, SEED)


@dataclass
class SyntheticRegressionSource:
    _target_: str = "experiment.data.datasets.synthetic_regression"
    num_train: int = allowed(2000, AT_LEAST_TWO)
    num_test: int = allowed(500, AT_LEAST_ONE)
    features: int = allowed(16, AT_LEAST_ONE)
    targets: int = allowed(1, AT_LEAST_ONE)
    noise: float = allowed(0.1, NON_NEGATIVE)
    seed: int = allowed(0, SEED)


@dataclass
class ImageFolderSource:
    _target_: str = "experiment.data.datasets.image_folder"
    path: str = MISSING
    image_size: int = allowed(64, AT_LEAST_ONE)
    channels: int = allowed(3, AT_LEAST_ONE)
    test_fraction: float = allowed(0.2, UNIT_OPEN)  # used only when there is no test/ subfolder
    seed: int = allowed(0, SEED)
    cache_dir: str | None = II("..cache_dir")
    cache_max_gb: float = allowed(II("..cache_max_gb"), POSITIVE)


@dataclass
class DatasetConf:
    """What every dataset option has; a user's own option (no schema of its own) states
    its `source` and gets the rest from here. No mean and std by default: inputs are
    normalized only where configured."""

    name: str = "custom"
    batch_size: int = allowed(128, AT_LEAST_ONE)
    eval_batch_size: int = allowed(1024, AT_LEAST_ONE)
    # Share of the training split held out for validation.
    val_fraction: float = allowed(0.1, UNIT_OPEN)
    # Train on the validation split too (experiment-promote --train-on-val): the run then
    # trains a fixed number of epochs and tests the last epoch's weights; its validation
    # metrics are no held-out estimate any more.
    train_on_val: bool = False
    # Share held out for testing from a source that returns no test split (a user's
    # source; the project's own sources have their own `source.test_fraction`).
    test_fraction: float = allowed(0.2, UNIT_OPEN)
    split_seed: int = allowed(
        0, SEED
    )  # the same splits for every trainer.seed: runs compare on one set
    # K-fold cross-validation: train and val pooled and cut into `folds` parts (stratified
    # by class where there are classes, seeded by split_seed); part `fold` (0 to folds-1)
    # validates, the rest trains; the test split stays as it is. A sweep sets both
    # (hydra.sweeper.folds); null: the val_fraction split.
    folds: int | None = allowed(None, AT_LEAST_TWO)
    fold: int | None = allowed(None, NON_NEGATIVE_INT)
    mean: list[float] | None = allowed(None, FINITE_LIST)  # null: no per-channel normalization
    std: list[float] | None = allowed(None, POSITIVE_LIST)
    augment: bool = II("regularization.augmentation")
    # Random-crop padding in pixels when augmenting.
    crop_padding: int = allowed(2, NON_NEGATIVE_INT)
    hflip: bool = False  # random horizontal flips when augmenting
    # Random-resized crops when augmenting: [min, max] share of the image area kept (then
    # resized back), as for photos; null: off.
    resized_crop_scale: list[float] | None = allowed(None, AREA_SHARE)
    normalization: Normalization = Normalization.dataset
    num_workers: int = allowed(0, NON_NEGATIVE_INT)  # DataLoader workers (Datasets' path)
    source: Any = MISSING  # any _target_ returning the data (see experiment.data.sources)
    # Dict items and batches: the key of the target; every other key (or those of
    # input_keys) goes to the model as a keyword argument (experiment.data.batches).
    target_key: str | None = None
    input_keys: list[str] | None = None
    # The DataLoader's collate_fn for a source's Datasets: a dotted path to a function,
    # or a _target_ node that builds one (padding variable-length sequences, say).
    collate_fn: Any = None


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
    cache_max_gb: float = allowed(8.0, POSITIVE)  # a larger cache falls back to the DataLoader path


# --------------------------------------------------------------------------- model


@dataclass
class ModelConf:
    _target_: str = MISSING
    dropout: float = allowed(II("regularization.dropout"), UNIT_OPEN_RIGHT)
    init: InitScheme = InitScheme.default
    init_std: float = allowed(0.02, POSITIVE)  # for init=normal


@dataclass
class MLPConf(ModelConf):
    _target_: str = "experiment.models.nets.MLP"
    hidden_sizes: list[int] = allowed(factory=lambda: [512, 256], rule=SIZES)
    batch_norm: bool = False


@dataclass
class CNNConf(ModelConf):
    _target_: str = "experiment.models.nets.CNN"
    channels: list[int] = allowed(factory=lambda: [32, 64], rule=SIZES)
    kernel_size: int = allowed(3, AT_LEAST_ONE)
    hidden_size: int = allowed(128, AT_LEAST_ONE)
    batch_norm: bool = True
    init: InitScheme = InitScheme.kaiming


@dataclass
class ResNet18Conf(ModelConf):
    _target_: str = "experiment.models.nets.ResNet18"


@dataclass
class TimmConf:
    _target_: str = "experiment.models.pretrained.timm_classifier"
    name: str = "resnet50"  # any timm architecture (timm.list_models())
    pretrained: bool = False  # weights from the local Hugging Face / torch hub cache
    weights: str | None = None  # or from this .safetensors / .pth file
    dropout: float = allowed(II("regularization.dropout"), UNIT_OPEN_RIGHT)
    freeze_backbone: bool = False  # train the classifier head only
    # With freeze_backbone: train everything from epoch N.
    unfreeze_at_epoch: int | None = allowed(None, THAW_EPOCH)


# --------------------------------------------------------------------------- optimizer


@dataclass
class OptimizerConf:
    _target_: str = MISSING
    _partial_: bool = True  # completed with the model's parameters in code
    _convert_: str = "all"  # plain lists in param_groups keep checkpoints weights_only-loadable
    lr: float = allowed(1e-3, POSITIVE_FINITE)
    weight_decay: float = allowed(II("regularization.weight_decay"), NON_NEGATIVE)
    # The backbone's learning rate as a share of lr (the head keeps lr); null: one rate.
    backbone_lr_scale: float | None = allowed(None, POSITIVE)


@dataclass
class AdamConf(OptimizerConf):
    _target_: str = "torch.optim.Adam"  # weight decay as an L2 penalty on the gradient
    lr: float = allowed(3e-3, POSITIVE_FINITE)
    betas: list[float] = allowed(factory=lambda: [0.9, 0.999], rule=BETAS)
    eps: float = allowed(1e-8, POSITIVE)


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"  # decoupled weight decay


@dataclass
class SGDConf(OptimizerConf):
    _target_: str = "torch.optim.SGD"
    lr: float = allowed(0.05, POSITIVE_FINITE)
    momentum: float = allowed(0.9, UNIT_OPEN_RIGHT)
    nesterov: bool = True


@dataclass
class RMSpropConf(OptimizerConf):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = allowed(0.99, UNIT_OPEN_RIGHT)
    eps: float = allowed(1e-8, POSITIVE)
    momentum: float = allowed(0.0, UNIT_OPEN_RIGHT)


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
    step_size: int = allowed(10, AT_LEAST_ONE)
    gamma: float = allowed(0.1, POSITIVE)


@dataclass
class CosineScheduleConf(ScheduleConf):
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = allowed(II("trainer.epochs"), AT_LEAST_ONE)
    eta_min: float = allowed(0.0, NON_NEGATIVE)


@dataclass
class PlateauScheduleConf(ScheduleConf):
    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    mode: str = "min"  # min for losses, max for accuracies
    factor: float = allowed(0.1, UNIT_OPEN_LEFT)
    patience: int = allowed(3, NON_NEGATIVE_INT)
    threshold: float = allowed(1e-4, NON_NEGATIVE)


@dataclass
class OneCycleScheduleConf(ScheduleConf):
    _target_: str = "torch.optim.lr_scheduler.OneCycleLR"
    max_lr: float = allowed(II("optimizer.lr"), POSITIVE)
    epochs: int = allowed(II("trainer.epochs"), AT_LEAST_ONE)
    steps_per_epoch: int | None = allowed(
        None, AT_LEAST_ONE
    )  # null: taken from the data at run time
    pct_start: float = allowed(0.3, UNIT_OPEN)


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
    _target_: str = "experiment.training.tasks.Classification"
    # cross_entropy | nll (a model ending in log-softmax) | bce_with_logits (multi-label
    # 0/1 targets), or a node with _target_ (any loss of (outputs, targets)).
    loss: Any = "cross_entropy"
    label_smoothing: float = allowed(II("regularization.label_smoothing"), UNIT_OPEN_RIGHT)
    metric: str = "val/acc"  # the default objective (optimized_metric)
    direction: str = "maximize"
    # Metrics of your own, by name: _target_ nodes of torchmetrics.Metric classes or
    # functions f(predictions, targets); logged as train/, val/, test/<name>.
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class RegressionTaskConf:
    _target_: str = "experiment.training.tasks.Regression"
    loss: Any = "mse"  # mse | l1 | smooth_l1, or a node with _target_
    metrics: dict[str, Any] = field(default_factory=dict)  # as classification's
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
    # MLflow's system metrics (CPU, memory, disk, network; the GPU in use where
    # nvidia-ml-py finds one), sampled every system_metrics_interval seconds.
    system_metrics: bool = False
    system_metrics_interval: float = allowed(10.0, SECONDS)


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


def register_configs() -> None:
    """Put every schema in Hydra's ConfigStore; option files extend them by name."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            # Under schema/<group>, not <group>, so `model=...` lists only real options.
            store.store(group=f"schema/{group}", name=name, node=node)
