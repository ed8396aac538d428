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
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_reported_clearly(tmp_path, case):
    _one_class_folder(tmp_path / "one")
    _empty_class_folders(tmp_path / "empty")
    args, expected = CASES[case]
    args = [a.format(tmp=tmp_path) for a in args]
    proc = run_cli(
        [*args, *store_overrides(tmp_path), "trainer.epochs=1"]
        if "trainer.epoch" not in " ".join(args)
        else [*args, *store_overrides(tmp_path)],
        tmp_path,
        timeout=120,
    )
    text = output(proc)
    assert proc.returncode != 0, text
    for fragment in expected:
        assert fragment.format(tmp=tmp_path) in text, (fragment, text)
    assert "Traceback" not in text, text
    assert not [r for r in all_runs(sqlite_uri(tmp_path)) if r.info.status == "RUNNING"]
