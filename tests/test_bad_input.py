"""Bad input: one clear message naming the problem, non-zero exit, no traceback,
and no MLflow run left RUNNING."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.conftest import all_runs, output, run_cli, sqlite_uri, store_overrides

pytestmark = pytest.mark.slow


def _one_class_folder(root):
    for i in range(3):
        (root / "train" / "cat").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / "train" / "cat" / f"{i}.png")


def _empty_class_folders(root):
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)


FAST_DATA = ["dataset=synthetic", "dataset.source.num_train=200", "dataset.source.num_test=50"]
SWEEP = ["-m", "hparams_search=optuna", "hydra.sweeper.n_trials=1", *FAST_DATA]

CASES = {
    "unknown group option": (["model=transformer"], ["Could not find 'model/transformer'", "cnn"]),
    "unknown key": (["trainer.epoch=3"], ["trainer.epoch", "not in"]),
    "wrong type": (["trainer.epochs=abc"], ["trainer.epochs", "'abc'", "Integer"]),
    "lr zero": (["optimizer.lr=0"], ["optimizer.lr", "0.0", "> 0"]),
    "lr negative": (["optimizer.lr=-0.1"], ["optimizer.lr", "-0.1", "> 0"]),
    "batch size": (["dataset.batch_size=0"], ["dataset.batch_size", "0", ">= 1"]),
    "dropout high": (["regularization.dropout=1.0"], ["regularization.dropout", "1.0", "[0, 1)"]),
    "dropout negative": (["regularization.dropout=-0.2"], ["regularization.dropout", "[0, 1)"]),
    "epochs": (["trainer.epochs=0"], ["trainer.epochs", "0", ">= 1"]),
    "device enum": (["trainer.device=gpu"], ["trainer.device", "gpu", "auto, cpu, cuda"]),
    "test metric as objective": (["optimized_metric=test/acc"], ["optimized_metric", "val/"]),
    "image folder without path": (["dataset=image_folder"], ["dataset.source.path", "Missing"]),
    "image folder missing": (
        ["dataset=image_folder", "dataset.source.path={tmp}/nowhere"],
        ["{tmp}/nowhere", "does not exist"],
    ),
    "image folder without images": (
        ["dataset=image_folder", "dataset.source.path={tmp}/empty"],
        ["No images found", "{tmp}/empty/train"],
    ),
    "image folder with one class": (
        ["dataset=image_folder", "dataset.source.path={tmp}/one"],
        ["Only one class folder", "cat", "at least two"],
    ),
    "mnist offline": (
        ["dataset=mnist", "dataset.source.root={tmp}/data"],
        ["{tmp}/data/MNIST/raw", "train-images-idx3-ubyte", "download=true"],
    ),
    "cifar10 offline": (
        ["dataset=cifar10", "dataset.source.root={tmp}/data"],
        ["cifar-10-batches-py", "data_batch_1", "download=true"],
    ),
    "unknown optimizer": (["optimizer=lamb"], ["Could not find 'optimizer/lamb'", "adamw"]),
    "wrong bool": (["trainer.deterministic=maybe"], ["trainer.deterministic", "maybe"]),
    "wrong float": (["regularization.dropout=high"], ["regularization.dropout", "'high'"]),
    "precision enum": (["trainer.precision=fp8"], ["trainer.precision", "fp8", "bf16"]),
    "weight decay negative": (["optimizer.weight_decay=-1"], ["optimizer.weight_decay", ">= 0"]),
    "label smoothing": (["regularization.label_smoothing=1.5"], ["label_smoothing", "[0, 1)"]),
    "grad clip zero": (["regularization.grad_clip=0"], ["regularization.grad_clip", "> 0"]),
    "val fraction": (["dataset.val_fraction=1.5"], ["dataset.val_fraction", "between 0 and 1"]),
    "step gamma": (["scheduler=step", "scheduler.gamma=0"], ["scheduler.gamma", "> 0"]),
    "nan loss from a huge lr": (
        [*FAST_DATA, "optimizer.lr=1e30"],
        ["NonFiniteLossError", "diverged", "Lower optimizer.lr"],
    ),
    "resume from a missing checkpoint": (
        ["trainer.resume={tmp}/nope.pt"],
        ["trainer.resume", "{tmp}/nope.pt", "existing checkpoint"],
    ),
    "tracking server unreachable": (
        ["tracking.uri=http://127.0.0.1:9"],
        ["Cannot use the MLflow tracking store http://127.0.0.1:9", "tracking=none"],
    ),
    "sweep range reversed": (
        [*SWEEP, "optimizer.lr=interval(0.1,0.01)"],
        ["optimizer.lr", "low < high"],
    ),
    "sweep log range from zero": (
        [*SWEEP, "optimizer.lr=tag(log,interval(0,0.1))"],
        ["optimizer.lr", "log scale needs low > 0"],
    ),
    "sweep unknown sampler": (
        [*SWEEP, "hydra.sweeper.sampler=grid"],
        ["hydra.sweeper.sampler 'grid'", "tpe, random"],
    ),
    "sweep unknown pruner": (
        [*SWEEP, "hydra.sweeper.pruner=early"],
        ["hydra.sweeper.pruner 'early'", "median"],
    ),
    "sweep direction": ([*SWEEP, "hydra.sweeper.direction=up"], ["direction=up", "maximize"]),
    "sweep storage unreachable": (
        [*SWEEP, "hydra.sweeper.storage=postgresql://user:pg-pass-123@127.0.0.1:9/optuna"],
        ["Cannot open the Optuna storage postgresql://user:***@127.0.0.1:9", "Connection refused"],
    ),
    "sweep storage scheme": (
        [*SWEEP, "hydra.sweeper.storage=nosuchdb://127.0.0.1/optuna"],
        ["hydra.sweeper.storage", "nosuchdb"],
    ),
}


# Exit codes: 1 Hydra rejected the override before the run started (unknown option or
# key, wrong type), 3 the run diverged, 2 every other bad input.
HYDRA_REJECTS = {
    "unknown group option",
    "unknown key",
    "wrong type",
    "device enum",
    "unknown optimizer",
    "wrong bool",
    "wrong float",
    "precision enum",
}


def expected_exit_code(case: str) -> int:
    return 1 if case in HYDRA_REJECTS else 3 if case.startswith("nan") else 2


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_reported_clearly(tmp_path, case):
    _one_class_folder(tmp_path / "one")
    _empty_class_folders(tmp_path / "empty")
    args, expected = CASES[case]
    args = [a.format(tmp=tmp_path) for a in args]
    given = {a.split("=", 1)[0] for a in args}
    defaults = [*store_overrides(tmp_path), "trainer.epochs=1"]
    defaults = [d for d in defaults if d.split("=", 1)[0] not in given]
    if "trainer.epoch" in given:  # the misspelt key is the case itself
        defaults.remove("trainer.epochs=1")
    proc = run_cli([*args, *defaults], tmp_path, timeout=120)
    text = output(proc)
    assert proc.returncode == expected_exit_code(case), text
    for fragment in expected:
        assert fragment.format(tmp=tmp_path) in text, (fragment, text)
    assert "Traceback" not in text, text
    assert "pg-pass-123" not in text  # passwords in URLs never reach the console
    assert not [r for r in all_runs(sqlite_uri(tmp_path)) if r.info.status == "RUNNING"]
