"""Bad input: one clear message naming the problem, the stated exit code, no traceback,
and no MLflow run left RUNNING.

Exit codes: 1 Hydra rejected the command line before the run started (unknown option or
key, wrong type), 2 any other bad input, 3 the run diverged. Value checks, data and
runtime errors run in this process; the cases where Hydra's own command line or the
sweeper is the subject run the real CLI.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from experiment.config.run_config import RunConfig
from experiment.errors import ConfigValueError
from experiment.train import run_reporting_errors
from tests.conftest import (
    all_runs,
    compose_config,
    output,
    run_cli,
    sqlite_uri,
    store_overrides,
    train_in_process,
)


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    exit_code: int
    says: tuple[str, ...]  # fragments of the message ({tmp}: the test's folder)


def case(args, exit_code, says) -> Case:
    return Case(tuple(args), exit_code, tuple(says))


FAST_DATA = ["dataset=synthetic", "dataset.source.num_train=200", "dataset.source.num_test=50"]
SWEEP = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", *FAST_DATA]

IN_PROCESS = {
    # A key added with + (or ++) where the schema has none: refused, naming the node's keys.
    **{
        f"added {key}": case([f"{plus}{key}={value}", *extra], 2, [key, "Its keys", known])
        for plus, key, value, known, extra in [
            ("+", "trainer.accumulate_grad", "4", "accumulate_grad_batches", []),
            ("++", "trainer.bogus", "1", "precision", []),
            ("+", "optimizer.bogus", "3", "lr", []),
            ("+", "task.bogus", "1", "label_smoothing", []),
            ("+", "model.bogus", "1", "dropout", []),
            ("+", "dataset.bogus", "1", "batch_size", []),
            ("+", "dataset.source.bogus", "1", "test_fraction", []),
            ("+", "scheduler.schedule.bogus", "1", "gamma", ["scheduler=step"]),
            ("+", "regularization.early_stopping.bogus", "1", "patience", []),
            ("+", "tracking.bogus", "1", "experiment_name", []),
            ("+", "bogus", "1", "optimized_metric", []),
        ]
    },
    "lr zero": case(["optimizer.lr=0"], 2, ["optimizer.lr", "0.0", "> 0"]),
    "lr negative": case(["optimizer.lr=-0.1"], 2, ["optimizer.lr", "-0.1", "> 0"]),
    "batch size": case(["dataset.batch_size=0"], 2, ["dataset.batch_size", "0", ">= 1"]),
    "dropout high": case(
        ["regularization.dropout=1.0"], 2, ["regularization.dropout", "1.0", "[0, 1)"]
    ),
    "dropout negative": case(
        ["regularization.dropout=-0.2"], 2, ["regularization.dropout", "[0, 1)"]
    ),
    "epochs": case(["trainer.epochs=0"], 2, ["trainer.epochs", "0", ">= 1"]),
    "test metric as objective": case(
        ["optimized_metric=test/acc"], 2, ["optimized_metric", "val/"]
    ),
    "weight decay negative": case(
        ["optimizer.weight_decay=-1"], 2, ["optimizer.weight_decay", ">= 0"]
    ),
    "label smoothing": case(
        ["regularization.label_smoothing=1.5"], 2, ["label_smoothing", "[0, 1)"]
    ),
    "grad clip zero": case(["regularization.grad_clip=0"], 2, ["regularization.grad_clip", "> 0"]),
    "val fraction": case(["dataset.val_fraction=1.5"], 2, ["dataset.val_fraction", "between 0"]),
    "step gamma": case(
        ["scheduler=step", "scheduler.schedule.gamma=0"], 2, ["scheduler.schedule.gamma", "> 0"]
    ),
    "image folder without path": case(
        ["dataset=image_folder"], 2, ["dataset.source.path", "Missing"]
    ),
    "lr not a number": case(["optimizer.lr=nan"], 2, ["optimizer.lr", "nan", "finite"]),
    "mean per channel for the wrong channels": case(
        ["dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.2,0.2,0.2]"],
        2,
        ["dataset.mean", "[0.5, 0.5, 0.5]", "one number per channel of these images (1)"],
    ),
    "checkpoint folder cannot be created": case(
        ["trainer.checkpoint_dir={tmp}/files/hostname/checkpoints"],
        2,
        ["trainer.checkpoint_dir", "{tmp}/files/hostname/checkpoints", "Not a directory"],
    ),
    "tracking store folder cannot be created": case(
        ["tracking.uri=sqlite:///{tmp}/files/hostname/mlflow.db"],
        2,
        ["tracking.uri", "{tmp}/files/hostname", "cannot be created", "tracking=none"],
    ),
    "image folder is a file": case(
        ["dataset=image_folder", "dataset.source.path={tmp}/files/hostname"],
        2,
        ["{tmp}/files/hostname", "is a file, not a folder"],
    ),
    "image folder missing": case(
        ["dataset=image_folder", "dataset.source.path={tmp}/nowhere"],
        2,
        ["{tmp}/nowhere", "does not exist"],
    ),
    "image folder without images": case(
        ["dataset=image_folder", "dataset.source.path={tmp}/empty"],
        2,
        ["No images found", "{tmp}/empty/train"],
    ),
    "image folder with one class": case(
        ["dataset=image_folder", "dataset.source.path={tmp}/one"],
        2,
        ["Only one class folder", "cat", "at least two"],
    ),
    "mnist offline": case(
        ["dataset=mnist", "dataset.source.root={tmp}/data"],
        2,
        ["{tmp}/data/MNIST/raw", "train-images-idx3-ubyte", "download=true"],
    ),
    "cifar10 offline": case(
        ["dataset=cifar10", "dataset.source.root={tmp}/data"],
        2,
        ["cifar-10-batches-py", "data_batch_1", "download=true"],
    ),
    "nan loss from a huge lr": case(
        [*FAST_DATA, "optimizer.lr=1e30"],
        3,
        ["NonFiniteLossError", "diverged", "Lower optimizer.lr"],
    ),
    "nan loss named by anomaly detection": case(
        [*FAST_DATA, "optimizer.lr=1e30", "debug=anomaly"],
        3,
        ["NonFiniteLossError", "trainer.detect_anomaly", "returned nan values", "Backward"],
    ),
    "timm weights not on this machine": case(
        ["model=timm", "model.name=resnet18", "model.pretrained=true"],
        2,
        ["No pretrained weights for timm model 'resnet18'", "never download", "model.weights="],
    ),
    "timm weights file missing": case(
        ["model=timm", "model.name=test_resnet", "model.weights={tmp}/nope.safetensors"],
        2,
        ["model.weights", "{tmp}/nope.safetensors", "existing"],
    ),
    "timm weights file unreadable": case(
        ["model=timm", "model.name=test_resnet", "model.weights={tmp}/files/hostname"],
        2,
        ["model.weights", "{tmp}/files/hostname", "readable weights file"],
    ),
    "unknown timm model": case(
        ["model=timm", "model.name=resnet_made_up"], 2, ["model.name", "timm architecture"]
    ),
    "unfreeze without freezing": case(
        ["model=timm", "model.name=test_resnet", "model.unfreeze_at_epoch=3"],
        2,
        ["model.unfreeze_at_epoch", "freeze_backbone=true"],
    ),
    "model normalization for a model without it": case(
        ["dataset.normalization=model"], 2, ["dataset.normalization", "model=timm"]
    ),
    "resume from a missing checkpoint": case(
        ["trainer.resume={tmp}/nope.pt"], 2, ["trainer.resume", "{tmp}/nope.pt", "existing"]
    ),
    "resume from a text file": case(
        ["trainer.resume={tmp}/files/hostname"],
        2,
        ["{tmp}/files/hostname", "not a PyTorch checkpoint file", "Expected a last.pt"],
    ),
    "resume from a truncated checkpoint": case(
        ["trainer.resume={tmp}/files/truncated.pt"],
        2,
        ["{tmp}/files/truncated.pt", "truncated", "Expected a last.pt"],
    ),
    "resume from an empty file": case(
        ["trainer.resume={tmp}/files/empty.pt"], 2, ["{tmp}/files/empty.pt", "empty"]
    ),
    "resume from a bare state_dict": case(
        ["trainer.resume={tmp}/files/weights.pt"],
        2,
        ["{tmp}/files/weights.pt", "not a checkpoint of a run", "optimizer"],
    ),
    "resume from a file with pickled code": case(
        ["trainer.resume={tmp}/files/code.pt"],
        2,
        ["{tmp}/files/code.pt", "pickled Python objects", "refused"],
    ),
    "objectives and directions differ in number": case(
        ["optimized_metric=[val/acc,model/params]"], 2, ["optimized_direction", "one direction"]
    ),
    "an objective the run does not measure": case(
        ["optimized_metric=[val/acc,test/acc]", "optimized_direction=[maximize,maximize]"],
        2,
        ["optimized_metric", "test/acc", "model/params"],
    ),
    # Combinations of keys that each pass their own rule (experiment.config.rules), and
    # settings that only the data tells wrong (training/data_rules.py): before any epoch.
    "plateau monitor unknown": case(
        [*FAST_DATA, "scheduler=plateau", "scheduler.monitor=val/nope"],
        2,
        ["scheduler.monitor", "val/nope", "val/loss, val/acc"],
    ),
    "plateau monitor not a validation metric": case(
        ["scheduler=plateau", "scheduler.monitor=test/acc"], 2, ["scheduler.monitor", "val/loss"]
    ),
    "plateau mode": case(
        ["scheduler=plateau", "scheduler.schedule.mode=up"], 2, ["scheduler.schedule.mode", "min"]
    ),
    "plateau stepped per batch": case(
        ["scheduler=plateau", "scheduler.interval=step"], 2, ["scheduler.interval", "epoch"]
    ),
    "one-cycle shorter than the run": case(
        ["scheduler=onecycle", "scheduler.schedule.epochs=1", "trainer.epochs=3"],
        2,
        ["scheduler.schedule.epochs", "at least trainer.epochs"],
    ),
    "one-cycle fewer steps than batches": case(
        [*FAST_DATA, "scheduler=onecycle", "scheduler.schedule.steps_per_epoch=1"],
        2,
        ["scheduler.schedule.steps_per_epoch", "the batches of an epoch"],
    ),
    "one-cycle stepped per epoch": case(
        ["scheduler=onecycle", "scheduler.interval=epoch"], 2, ["scheduler.interval", "step"]
    ),
    "nesterov without momentum": case(
        ["optimizer=sgd", "optimizer.momentum=0"], 2, ["optimizer.momentum", "nesterov"]
    ),
    "loss that does not reduce": case(
        ["task.loss={{_target_:torch.nn.CrossEntropyLoss,reduction:none}}"],
        2,
        ["task.loss.reduction", "'none'", "mean or sum"],
    ),
    "regression loss that does not reduce": case(
        [
            "task=regression",
            "dataset=synthetic_regression",
            "task.loss={{_target_:torch.nn.MSELoss,reduction:none}}",
        ],
        2,
        ["task.loss.reduction", "mean or sum"],
    ),
    "accumulation with a summed loss": case(
        [
            "trainer.accumulate_grad_batches=2",
            "task.loss={{_target_:torch.nn.CrossEntropyLoss,reduction:sum}}",
        ],
        2,
        ["trainer.accumulate_grad_batches", "reduction=sum"],
    ),
    "a fold without folds": case(
        ["dataset.fold=1"], 2, ["dataset.fold", "set together with dataset.folds"]
    ),
    "a fold past the folds": case(
        ["dataset.folds=3", "dataset.fold=3"], 2, ["'dataset.fold': 3", "[0, dataset.folds - 1]"]
    ),
    "folds with validation trained on": case(
        ["dataset.folds=3", "dataset.fold=0", "dataset.train_on_val=true"],
        2,
        ["dataset.train_on_val", "false with dataset.folds"],
    ),
    "overfitting some batches, limiting others": case(
        ["trainer.overfit_batches=2", "trainer.limit_batches=4"],
        2,
        ["trainer.limit_batches", "null with trainer.overfit_batches"],
    ),
    "model without parameters": case(
        [*FAST_DATA, "model=mlp", "model._target_=tests.apps.bad_data.NoParameters"],
        2,
        ["no trainable parameters", "tests.apps.bad_data.NoParameters"],
    ),
    "batch norm with one-sample batches": case(
        [*FAST_DATA, "dataset.batch_size=1"], 2, ["dataset.batch_size", "batch norm"]
    ),
    "crop padding larger than the images": case(
        [*FAST_DATA, "regularization.augmentation=true", "dataset.crop_padding=100000"],
        2,
        ["dataset.crop_padding", "100000", "at most the images' size"],
    ),
    "interpolation of a missing key": case(
        ["trainer.epochs=${{missing.key}}"], 2, ["'trainer.epochs'", "missing.key", "interpolation"]
    ),
    "interpolation of an unset variable": case(
        ["tracking.experiment_name=${{oc.env:EXPERIMENT_UNSET_VARIABLE}}"],
        2,
        ["'tracking.experiment_name'", "EXPERIMENT_UNSET_VARIABLE", "${{oc.env:NAME,default}}"],
    ),
    "no optimized metric": case(
        ["optimized_metric=[]", "optimized_direction=[]"], 2, ["optimized_metric", "non-empty"]
    ),
    "empty experiment name": case(
        ["tracking.experiment_name="], 2, ["tracking.experiment_name", "a non-empty name"]
    ),
    "artifact root that cannot be created": case(
        ["tracking.artifact_root={tmp}/files/hostname/artifacts"],
        2,
        ["tracking.artifact_root", "Not a directory"],
    ),
    # A user's data, wrong: named once it is loaded, before any epoch.
    "NaN and infinity in the inputs": case(
        ["dataset.source._target_=tests.apps.bad_data.non_finite_inputs", "model=mlp"],
        2,
        ["2 of the", "NaN or infinite inputs", "sample 3"],
    ),
    "NaN in the targets": case(
        [
            "dataset.source._target_=tests.apps.bad_data.non_finite_targets",
            "model=mlp",
            "task=regression",
        ],
        2,
        ["NaN or infinite targets", "sample 5"],
    ),
    "one class in the training data": case(
        ["dataset.source._target_=tests.apps.bad_data.one_class", "model=mlp"],
        2,
        ["the label 0", "two classes or more"],
    ),
    "image folder where nothing decodes": case(
        [
            "dataset=image_folder",
            "dataset.source.path={tmp}/undecodable",
            "dataset.cache_dir={tmp}/cache",
        ],
        2,
        ["No image in {tmp}/undecodable/train can be decoded"],
    ),
    "image folder where nothing decodes, without a cache": case(
        ["dataset=image_folder", "dataset.source.path={tmp}/undecodable", "dataset.cache_dir=null"],
        2,
        ["Cannot read image {tmp}/undecodable/train/"],
    ),
    "image folder too small to split": case(
        ["dataset=image_folder", "dataset.source.path={tmp}/few"],
        2,
        ["The train split holds no samples once the data is split", "dataset.val_fraction"],
    ),
    "tracking server unreachable": case(
        ["tracking.uri=http://127.0.0.1:9"],
        2,
        ["Cannot use the MLflow tracking store http://127.0.0.1:9", "tracking=none"],
    ),
}

# Each group's keys outside what their fields allow (experiment.config.allowed), by class:
# (key, value, what the message says is allowed, the group options that have the key).
OUT_OF_RANGE = [
    ("trainer.seed", "-1", "2**32 - 1", []),
    ("trainer.dist_timeout", "0", "seconds > 0", []),
    ("trainer.accumulate_grad_batches", "0", ">= 1", []),
    ("trainer.limit_batches", "0", ">= 1", []),
    ("trainer.ema.decay", "1.0", "strictly between 0 and 1", []),
    ("trainer.ema.start_epoch", "0", ">= 1", []),
    ("trainer.overfit_batches", "0", ">= 1", []),
    ("trainer.overfit_loss", "0", "> 0", []),
    ("trainer.profile_steps", "0", ">= 1", []),
    ("dataset.folds", "1", ">= 2", []),
    ("dataset.fold", "-1", ">= 0", []),
    ("dataset.eval_batch_size", "0", ">= 1", []),
    ("dataset.crop_padding", "-1", ">= 0", []),
    ("dataset.std", "[0]", "> 0", []),
    ("dataset.resized_crop_scale", "[0.9,0.1]", "min <= max", []),
    ("dataset.num_workers", "-1", ">= 0", []),
    ("dataset.test_fraction", "0", "between 0 and 1", []),
    ("dataset.source.num_classes", "1", ">= 2", ["dataset=synthetic"]),
    ("dataset.source.noise", "-1", ">= 0", ["dataset=synthetic"]),
    ("dataset.source.num_train", "1", ">= 2", ["dataset=synthetic"]),
    ("model.kernel_size", "0", ">= 1", []),
    ("model.init_std", "0", "> 0", []),
    ("model.hidden_sizes", "[]", "non-empty list", ["model=mlp"]),
    ("model.channels", "[0]", "integers >= 1", []),
    ("optimizer.betas", "[1.0,0.9]", "betas", []),
    ("optimizer.eps", "0", "> 0", []),
    ("optimizer.momentum", "1.0", "[0, 1)", ["optimizer=sgd"]),
    ("optimizer.alpha", "1", "[0, 1)", ["optimizer=rmsprop"]),
    ("optimizer.backbone_lr_scale", "0", "> 0", []),
    ("scheduler.schedule.step_size", "0", ">= 1", ["scheduler=step"]),
    ("scheduler.schedule.T_max", "0", ">= 1", []),
    ("scheduler.schedule.eta_min", "-1", ">= 0", []),
    ("scheduler.schedule.factor", "1.5", "(0, 1]", ["scheduler=plateau"]),
    ("scheduler.schedule.patience", "-1", ">= 0", ["scheduler=plateau"]),
    (
        "scheduler.schedule.pct_start",
        "1",
        "strictly between 0 and 1",
        ["scheduler=onecycle"],
    ),
    ("regularization.early_stopping.patience", "0", ">= 1", []),
    ("regularization.early_stopping.min_delta", "-1", ">= 0", []),
    ("tracking.system_metrics_interval", "0", "> 0", []),
]

# Hydra's own command line rejects these before any job starts: `main()` in this process,
# with the arguments a user types.
HYDRA = {
    "unknown group option": case(
        ["model=transformer"], 1, ["Could not find 'model/transformer'", "cnn"]
    ),
    "unknown key": case(["trainer.epoch=3"], 1, ["trainer.epoch", "not in"]),
    "wrong type": case(["trainer.epochs=abc"], 1, ["trainer.epochs", "'abc'", "Integer"]),
    "device enum": case(["trainer.device=gpu"], 1, ["trainer.device", "gpu", "auto, cpu, cuda"]),
    "unknown optimizer": case(["optimizer=lamb"], 1, ["Could not find 'optimizer/lamb'", "adamw"]),
    "wrong bool": case(["trainer.deterministic=maybe"], 1, ["trainer.deterministic", "maybe"]),
    "wrong float": case(["regularization.dropout=high"], 1, ["regularization.dropout", "'high'"]),
    "precision enum": case(["trainer.precision=fp8"], 1, ["trainer.precision", "fp8", "bf16"]),
    "sweep seed not a number": case(
        [*SWEEP, "hydra.sweeper.seed=abc"], 1, ["hydra.sweeper.seed", "abc"]
    ),
    "loop control in the schedule": case(
        ["scheduler=step", "scheduler.schedule.interval=step"], 1, ["interval", "not in"]
    ),
}

# The command line's own reporting of a run's error, and the sweeper's settings: the real
# command in a subprocess.
CLI = {
    # A config file that is not YAML: the file, line and problem in one line, exit 1.
    "YAML syntax error in an option file": case(
        ["--config-dir", "{tmp}/conf", "model=broken"],
        1,
        ["ConfigError: YAML error in {tmp}/conf/model/broken.yaml, line ", "expected ',' or ']'"],
    ),
    # The CLI's own reporting of a run's error: one line, exit 2 (the issue users hit).
    "value out of range, from the command line": case(
        ["optimizer.lr=0"], 2, ["optimizer.lr", "> 0"]
    ),
    "resume from a text file, from the command line": case(
        ["trainer.resume={tmp}/files/hostname"], 2, ["{tmp}/files/hostname", "not a PyTorch"]
    ),
    "tracking database unreachable": case(
        ["tracking.uri=postgresql://user:pg-pass-123@127.0.0.1:9/mlflow"],
        2,
        ["TrackingError", "postgresql://user:***@127.0.0.1:9/mlflow", "Connection refused"],
    ),
}


# The sweeper's own settings, refused before any trial: through main() in this process.
TWO = ["optimized_metric=[val/acc,val/loss]", "hydra.sweeper.direction=[maximize,minimize]"]
SWEEP_SETTINGS = {
    "sweep direction against optimized_direction": case(
        [*SWEEP, *TWO, "optimized_direction=minimize"],
        2,
        ["hydra.sweeper.direction=['maximize', 'minimize']", "optimized_direction=minimize"],
    ),
    "sweep directions for one metric": case(
        [*SWEEP, "hydra.sweeper.direction=[maximize,minimize]"],
        2,
        ["2 direction(s) for optimized_metric=val/acc", "one direction per optimized metric"],
    ),
    "sweep timeout": case([*SWEEP, "hydra.sweeper.timeout=-5"], 2, ["timeout=-5", "> 0"]),
    "sweep patience": case([*SWEEP, "hydra.sweeper.patience=0"], 2, ["patience=0", ">= 1"]),
    "sweep target per objective": case(
        [*SWEEP, *TWO, "hydra.sweeper.target=0.9"], 2, ["target=0.9", "needs 2 numbers"]
    ),
    "sweep constraint malformed": case(
        [*SWEEP, "hydra.sweeper.constraints=[params]"],
        2,
        ["'params' is not a constraint", "'MEASURE <= NUMBER'"],
    ),
    "sweep constraint sampler": case(
        [*SWEEP, "hydra.sweeper.sampler=random", "hydra.sweeper.constraints=['model/params<=9']"],
        2,
        ["sampler RandomSampler does not take constraints", "tpe, nsgaii, nsgaiii or gp"],
    ),
    "sweep failure rate": case(
        [*SWEEP, "hydra.sweeper.max_failure_rate=2"], 2, ["max_failure_rate=2", "[0, 1]"]
    ),
    "sweep repeats": case([*SWEEP, "hydra.sweeper.repeats=0"], 2, ["repeats=0", ">= 1"]),
    "sweep seed negative": case(
        [*SWEEP, "hydra.sweeper.seed=-1"], 2, ["hydra.sweeper.seed=-1", "[0, 2**32 - 1]"]
    ),
    "sweep seed too large": case(
        [*SWEEP, "hydra.sweeper.seed=4294967296"], 2, ["hydra.sweeper.seed=4294967296"]
    ),
    "sweep without a direction": case(
        [*SWEEP, "hydra.sweeper.direction=[]"], 2, ["hydra.sweeper.direction=[]", "maximize"]
    ),
    "sweep folds": case([*SWEEP, "hydra.sweeper.folds=0"], 2, ["folds=0", ">= 1"]),
    "sweep fold key": case(
        [*SWEEP, "hydra.sweeper.folds=3", "hydra.sweeper.fold_key=data.fold"],
        2,
        ["data is not in this config", "hydra.sweeper.fold_key"],
    ),
    "sweep folds trained on": case(
        [*SWEEP, "hydra.sweeper.folds=3", "dataset.train_on_val=true"],
        2,
        ["hydra.sweeper.folds=3 with dataset.train_on_val=true", "set it to false"],
    ),
    "sweep retries": case([*SWEEP, "hydra.sweeper.max_retries=-1"], 2, ["max_retries=-1", ">= 0"]),
    "sweep seed key": case(
        [*SWEEP, "hydra.sweeper.repeats=2", "hydra.sweeper.seed_key=trainer.sed"],
        2,
        ["trainer.sed is None", "hydra.sweeper.seed_key"],
    ),
    "sweep range reversed": case(
        [*SWEEP, "optimizer.lr=interval(0.1,0.01)"], 2, ["optimizer.lr", "low < high"]
    ),
    "sweep log range from zero": case(
        [*SWEEP, "optimizer.lr=tag(log,interval(0,0.1))"],
        2,
        ["optimizer.lr", "log scale needs low > 0"],
    ),
    "sweep unknown sampler": case(
        [*SWEEP, "hydra.sweeper.sampler=annealing"],
        2,
        ["hydra.sweeper.sampler 'annealing'", "tpe, random"],
    ),
    "sweep unknown pruner": case(
        [*SWEEP, "hydra.sweeper.pruner=early"], 2, ["hydra.sweeper.pruner 'early'", "median"]
    ),
    "sweep direction": case(
        [*SWEEP, "hydra.sweeper.direction=up"], 2, ["direction=up", "maximize"]
    ),
    "sweep without trials": case([*SWEEP, "hydra.sweeper.n_trials=0"], 2, ["n_trials=0"]),
    "sweep workers without a shared storage": case(
        [*SWEEP, "hydra.sweeper.storage=null", "hydra.sweeper.n_jobs=2"],
        2,
        ["needs a database storage"],
    ),
    "sweep jobs without a storage they reach": case(
        [*SWEEP, "hydra.sweeper.storage=null", "hydra/launcher=submitit_local"],
        2,
        ["hydra/launcher=submitit_local", "reports to the study through its database"],
    ),
    "sweep pruning several objectives": case(
        [
            *SWEEP,
            "optimized_metric=[val/acc,model/params]",
            "optimized_direction=[maximize,minimize]",
            "hydra.sweeper.pruner=median",
        ],
        2,
        ["hydra.sweeper.pruner=median", "cannot prune a study with 2 objectives"],
    ),
    "sweep warm start without a storage": case(
        [*SWEEP, "hydra.sweeper.storage=null", "hydra.sweeper.warm_start=other"],
        2,
        ["hydra.sweeper.warm_start reads another study from a database storage"],
    ),
    # MLflow alone retries a database for over a minute and a half before it says so.
    "sweep storage unreachable": case(
        [*SWEEP, "hydra.sweeper.storage=postgresql://user:pg-pass-123@127.0.0.1:9/optuna"],
        2,
        ["Cannot open the Optuna storage postgresql://user:***@127.0.0.1:9", "Connection refused"],
    ),
    "sweep storage scheme": case(
        [*SWEEP, "hydra.sweeper.storage=nosuchdb://127.0.0.1/optuna"],
        2,
        ["hydra.sweeper.storage", "nosuchdb"],
    ),
}


class _Payload:
    def __reduce__(self):  # what a booby-trapped checkpoint would run when unpickled
        return (print, ("unpickled code ran",))


def _write_bad_inputs(tmp) -> None:
    """Folders and files the cases point at, each wrong in its own way."""
    for i in range(3):
        (tmp / "one" / "train" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp / "one" / "train" / "cat" / f"{i}.png")
    for name in ("cat", "dog"):
        (tmp / "empty" / "train" / name).mkdir(parents=True)
    files = tmp / "files"
    files.mkdir()
    (files / "hostname").write_text("build-host-17\n")
    (files / "empty.pt").write_bytes(b"")
    torch.save({"weight": torch.zeros(3)}, files / "weights.pt")
    whole = (files / "weights.pt").read_bytes()
    (files / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    torch.save({"model": _Payload()}, files / "code.pt")
    for name in ("cat", "dog"):  # files named as images that are not
        (tmp / "undecodable" / "train" / name).mkdir(parents=True)
        for i in range(3):
            (tmp / "undecodable" / "train" / name / f"{i}.png").write_text("not an image\n")
    for name in ("cat", "dog"):  # one image each: nothing left to train on once split
        (tmp / "few" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp / "few" / "train" / name / "0.png")
    (tmp / "conf" / "model").mkdir(parents=True)
    (tmp / "conf" / "model" / "broken.yaml").write_text("_target_: mynets.Net\nwidth: [32\n")


def _with_defaults(tmp_path, args: tuple[str, ...]) -> list[str]:
    args = [a.format(tmp=tmp_path) for a in args]
    given = {a.split("=", 1)[0] for a in args}
    defaults = [*store_overrides(tmp_path), "trainer.epochs=1"]
    if "trainer.epoch" in given:  # the misspelt key is the case itself
        defaults.remove("trainer.epochs=1")
    return [*args, *(d for d in defaults if d.split("=", 1)[0] not in given)]


def _check_message(text: str, says: tuple[str, ...], tmp_path) -> None:
    for fragment in says:
        assert fragment.format(tmp=tmp_path) in text, (fragment, text)
    assert "Traceback" not in text, text
    assert "weights_only=False" not in text  # never advise running a file's code
    assert "pg-pass-123" not in text  # passwords in URLs never reach the console
    assert "unpickled code ran" not in text


@pytest.mark.parametrize("name", list(IN_PROCESS))
def test_bad_input_stops_the_run_with_one_clear_line(tmp_path, caplog, capsys, name):
    _write_bad_inputs(tmp_path)
    bad = IN_PROCESS[name]
    cfg = compose_config(_with_defaults(tmp_path, bad.args))
    with pytest.raises(SystemExit) as stopped:  # any other exception fails the test
        run_reporting_errors(cfg)
    assert stopped.value.code == bad.exit_code
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, errors
    _check_message(errors[0] + capsys.readouterr().out, bad.says, tmp_path)
    assert not [r for r in all_runs(sqlite_uri(tmp_path)) if r.info.status == "RUNNING"]


@pytest.mark.parametrize("name", list(HYDRA))
def test_bad_command_line_is_rejected_by_hydra_with_exit_code_1(
    tmp_path, monkeypatch, capsys, name
):
    bad = HYDRA[name]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        train_in_process(monkeypatch, *_with_defaults(tmp_path, bad.args))
    assert stopped.value.code == bad.exit_code
    captured = capsys.readouterr()
    _check_message(captured.out + captured.err, bad.says, tmp_path)
    assert not all_runs(sqlite_uri(tmp_path))  # nothing started


@pytest.mark.slow  # a Hydra multirun each, in this process
@pytest.mark.parametrize("name", list(SWEEP_SETTINGS))
def test_bad_sweep_settings_stop_before_any_trial_with_one_line_on_stderr(
    tmp_path, monkeypatch, capsys, name
):
    bad = SWEEP_SETTINGS[name]
    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}"
    monkeypatch.chdir(tmp_path)
    argv = _with_defaults(tmp_path, bad.args)
    if not any(a.startswith("hydra.sweeper.storage=") for a in argv):
        argv.append(storage)
    with pytest.raises(SystemExit) as stopped:
        train_in_process(monkeypatch, *argv)
    assert stopped.value.code == bad.exit_code
    captured = capsys.readouterr()
    (line,) = [line for line in captured.err.splitlines() if re.match(r"^\w+Error: ", line)]
    _check_message(line, bad.says, tmp_path)
    assert not list(tmp_path.rglob("optimization_results.yaml"))  # no trial ran
    assert not all_runs(sqlite_uri(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CLI))
def test_bad_command_line_is_reported_clearly(tmp_path, name):
    _write_bad_inputs(tmp_path)
    bad = CLI[name]
    proc = run_cli(_with_defaults(tmp_path, bad.args), tmp_path, timeout=120)
    text = output(proc)
    assert proc.returncode == bad.exit_code, text
    _check_message(text, bad.says, tmp_path)
    assert not [r for r in all_runs(sqlite_uri(tmp_path)) if r.info.status == "RUNNING"]


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_that_cannot_be_created_is_one_line_before_hydra_creates_it(
    tmp_path, monkeypatch, capsys, key
):
    _write_bad_inputs(tmp_path)
    folder = tmp_path / "files" / "hostname" / "outputs"
    sweep = ["-m", "hparams_search=optuna"] if key == "hydra.sweep.dir" else []
    args = [*sweep, f"{key}={folder}", *_with_defaults(tmp_path, ())]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        train_in_process(monkeypatch, *args)
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    _check_message(captured.err, (key, str(folder), "is a file, not a folder"), tmp_path)
    assert len([line for line in captured.err.splitlines() if "Error" in line]) == 1
    assert not all_runs(sqlite_uri(tmp_path))  # nothing started


@pytest.mark.parametrize("options", sorted({tuple(options) for *_, options in OUT_OF_RANGE}))
def test_every_groups_keys_outside_what_their_fields_allow_are_named(options):
    """Refused by RunConfig.enter, the first step of every run, before any data loads."""
    composed = compose_config([*options, "tracking=none"])
    for key, value, allowed, wanted in OUT_OF_RANGE:
        if tuple(wanted) != options:
            continue
        cfg = copy.deepcopy(composed)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
        with pytest.raises(ConfigValueError) as refused:
            RunConfig.enter(cfg)
        assert refused.value.key == key and allowed in str(refused.value), str(refused.value)
