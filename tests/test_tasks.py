"""Your own model, data, loss and metrics: the example project's modules (examples/
own_project) composed through the Python API with its config folder, trained in this
process; metrics against scikit-learn's; bad input refused with one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, r2_score, roc_auc_score

import experiment
from experiment.train import run_reporting_errors
from experiment.training.builders import build_parts, build_task
from experiment.training.engine import evaluate
from experiment.training.tasks import Classification, Regression
from tests.conftest import ROOT, all_runs, sqlite_uri, tracking_overrides
from tests.test_transfer import photo_folder

OWN = ROOT / "examples" / "own_project"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _own_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(OWN))  # mynets, mydata: as from the project's folder


def own(*overrides: str, tmp_path=None, tracked: bool = False):
    """The example project's config; checkpoints (and, `tracked`, an MLflow store) under
    tmp_path."""
    extra = [f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"] if tmp_path else []
    extra += tracking_overrides(tmp_path) if tracked else ["tracking=none"]
    return experiment.compose(
        ["trainer.progress=quiet", *extra, *overrides], config_dir=str(OWN / "conf")
    )


class _Batches:
    def __init__(self, *batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_classification_metrics_equal_scikit_learns():
    torch.manual_seed(0)
    outputs, labels = torch.randn(300, 7), torch.randint(0, 7, (300,))
    model = torch.nn.Identity()
    loader = _Batches((outputs[:128], labels[:128]), (outputs[128:], labels[128:]))
    metrics = evaluate(model, loader, device=CPU, task=Classification())
    predicted = outputs.argmax(1).numpy()
    assert metrics["acc"] == pytest.approx((predicted == labels.numpy()).mean())
    assert metrics["f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    top5 = (outputs.topk(5, 1).indices == labels[:, None]).any(1).float().mean()
    assert metrics["top5_acc"] == pytest.approx(float(top5))
    assert metrics["loss"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(outputs, labels))
    )


def test_metrics_of_ones_own_equal_scikit_learns_with_the_data_filling_their_arguments():
    """task.metrics: a torchmetrics class without num_classes (filled: 7 classes), a
    binary metric on two classes (it sees the positive class's probability), a plain
    function of the epoch's predictions and targets."""
    torch.manual_seed(0)
    outputs, labels = torch.randn(300, 7), torch.randint(0, 7, (300,))
    loader = _Batches((outputs[:128], labels[:128]), (outputs[128:], labels[128:]))
    task = build_task(
        {
            "_target_": "experiment.training.tasks.Classification",
            "metrics": {
                "auroc": {"_target_": "torchmetrics.classification.MulticlassAUROC"},
                "brier": {"_target_": "tests.apps.structured.brier"},
            },
        }
    )
    metrics = evaluate(torch.nn.Identity(), loader, device=CPU, task=task, num_outputs=7)
    probabilities = outputs.softmax(1).numpy()
    assert metrics["auroc"] == pytest.approx(
        roc_auc_score(labels, probabilities, multi_class="ovr"), rel=1e-5
    )
    truth = np.eye(7)[labels.numpy()]
    assert metrics["brier"] == pytest.approx(((probabilities - truth) ** 2).sum(1).mean(), rel=1e-5)
    binary = build_task(
        {
            "_target_": "experiment.training.tasks.Classification",
            "metrics": {"auroc": {"_target_": "torchmetrics.classification.BinaryAUROC"}},
        }
    )
    two = torch.randn(200, 2)
    truth2 = torch.randint(0, 2, (200,))
    values = evaluate(
        torch.nn.Identity(), _Batches((two, truth2)), device=CPU, task=binary, num_outputs=2
    )
    assert values["auroc"] == pytest.approx(roc_auc_score(truth2, two.softmax(1)[:, 1]), rel=1e-5)


def test_multi_label_and_regression_metrics_equal_scikit_learns():
    torch.manual_seed(0)
    logits, truth = torch.randn(200, 4), (torch.rand(200, 4) > 0.5).float()
    multi = evaluate(
        torch.nn.Identity(),
        _Batches((logits, truth)),
        device=CPU,
        task=Classification(loss="bce_with_logits"),
    )
    assert multi["f1"] == pytest.approx(f1_score(truth, logits > 0, average="macro"))
    assert multi["acc"] == pytest.approx(((logits > 0).float() == truth).float().mean().item())
    predicted, target = torch.randn(150, 3), torch.randn(150, 3)
    loader = _Batches((predicted[:100], target[:100]), (predicted[100:], target[100:]))
    metrics = evaluate(torch.nn.Identity(), loader, device=CPU, task=Regression())
    assert metrics["r2"] == pytest.approx(r2_score(target, predicted), rel=1e-5)
    assert metrics["mse"] == pytest.approx(float(((predicted - target) ** 2).mean()), rel=1e-5)
    assert metrics["mae"] == pytest.approx(float((predicted - target).abs().mean()), rel=1e-5)


def test_a_users_lazy_model_taking_only_num_classes_is_built_before_its_optimizer():
    cfg = own("task=regression", "dataset=diabetes", "model=tiny")
    parts = build_parts(cfg, CPU)
    first = parts.model.net[1]
    assert first.in_features == 10 and not isinstance(first.weight, torch.nn.UninitializedParameter)
    optimized = {id(p) for group in parts.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in parts.model.parameters()}
    assert parts.model.net[-1].out_features == 1  # one target column


@pytest.mark.parametrize("loss", ["mse", "l1", "smooth_l1"])
def test_regression_learns_with_each_named_loss(loss, tmp_path):
    cfg = own(
        "task=regression",
        f"task.loss={loss}",
        "dataset=diabetes",
        "model=tiny",
        "trainer.epochs=15",
        tmp_path=tmp_path,
    )
    best_mse = experiment.run(cfg)
    assert best_mse < 0.8  # standardized targets: predicting their mean scores 1.0


@pytest.mark.parametrize("dataset", ["wine", "wine_dataset"])
def test_a_source_of_tensors_and_a_source_dataset_both_train(dataset, tmp_path):
    """wine: arrays held on the device; wine_dataset: a torch Dataset and a DataLoader;
    a metric of one's own (AUROC, its num_classes filled from the data) as the objective."""
    cfg = own(
        f"dataset={dataset}",
        "model=tiny",
        "trainer.epochs=15",
        "+task.metrics.auroc._target_=torchmetrics.AUROC",
        "optimized_metric=val/auroc",
        tmp_path=tmp_path,
    )
    parts = build_parts(cfg, CPU)
    loader = type(parts.data.train).__name__
    assert loader == ("DeviceLoader" if dataset == "wine" else "HostLoader")
    assert parts.data.classes is not None and len(parts.data.classes) == 3
    assert 0.9 < experiment.run(cfg) <= 1.0  # val/auroc


@pytest.mark.slow
def test_torchvisions_resnet18_through_its_own_constructor_on_an_image_folder(tmp_path):
    folder = photo_folder(tmp_path / "photos", per_class=6, size=40)
    cfg = own(
        "model=torchvision_resnet18",
        "dataset=image_folder",
        f"dataset.source.path={folder}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.source.image_size=32",
        "dataset.batch_size=4",
        "trainer.epochs=1",
        tmp_path=tmp_path,
    )
    parts = build_parts(cfg, CPU)
    assert type(parts.model).__module__ == "torchvision.models.resnet"
    assert parts.model.fc.out_features == 2  # num_classes, passed by name
    assert 0.0 <= experiment.run(cfg) <= 1.0


BAD = {
    "an image model given feature rows": (
        ["dataset=wine", "model=cnn"],
        ["Invalid value for 'model': 'cnn'", "inputs of shape (13,): model=mlp", "images"],
    ),
    "a timm model given feature rows": (
        ["dataset=wine", "model=timm", "model.name=resnet18"],
        ["timm (resnet18)", "model=mlp"],
    ),
    "output width": (
        ["task=regression", "dataset=diabetes", "model=tiny", "+model.num_classes=3"],
        ["outputs 3 values per sample", "1 target columns"],
    ),
    "integer targets for a regression": (
        ["task=regression", "dataset=wine", "model=tiny"],
        ["task=regression takes real-valued targets", "int64"],
    ),
    "float targets for a classification": (
        ["dataset=diabetes", "model=tiny"],
        ["integer class indices", "float32", "task=regression"],
    ),
    "a source returning something else": (
        ["dataset=diabetes", "model=tiny", "dataset.source._target_=os.getcwd"],
        ["dataset.source", "returned str", "a pair (inputs, targets)"],
    ),
    "unknown loss": (
        ["task=regression", "task.loss=hinge", "dataset=diabetes", "model=tiny"],
        ["task.loss", "'hinge'", "mse, l1, smooth_l1"],
    ),
    "unknown metric": (
        ["dataset=wine", "model=tiny", "optimized_metric=val/auc"],
        ["optimized_metric", "val/auc", "val/acc, val/f1"],
    ),
    "a model that is no module": (
        ["dataset=wine", "model=tiny", "model._target_=builtins.dict"],
        ["model._target_", "an nn.Module class or factory"],
    ),
    "dict items without a target key": (
        [
            "dataset=wine",
            "model=tiny",
            "dataset.source._target_=tests.apps.structured.dataset_items",
        ],
        ["items are dicts", "keys ['label', 'left', 'right']", "set dataset.target_key"],
    ),
    "a target key the items lack": (
        [
            "dataset=wine",
            "model=tiny",
            "dataset.source._target_=tests.apps.structured.dataset_items",
            "+dataset.target_key=y",
        ],
        ["no key 'y'", "label, left, right", "dataset.target_key"],
    ),
    "input keys without a target key": (
        ["dataset=wine", "model=tiny", "+dataset.input_keys=[a]"],
        ["dataset.input_keys", "dataset.target_key"],
    ),
    "a collate_fn that cannot be imported": (
        ["dataset=wine_dataset", "model=tiny", "+dataset.collate_fn=nowhere.pad"],
        ["dataset.collate_fn", "nowhere.pad", "importable"],
    ),
    "a binary metric for three classes": (
        [
            "dataset=wine",
            "model=tiny",
            "+task.metrics.auc._target_=torchmetrics.classification.BinaryAUROC",
        ],
        ["task.metrics", "BinaryAUROC", "3 classes"],
    ),
    "a metric of several numbers": (
        [
            "dataset=wine",
            "model=tiny",
            "+task.metrics.each._target_=torchmetrics.classification.MulticlassAccuracy",
            "+task.metrics.each.average=null",
        ],
        ["metric 'each' gave (3,) values", "average"],
    ),
    "a task without the protocol": (
        ["dataset=wine", "model=tiny", "task._target_=collections.OrderedDict"],
        ["task._target_", "subclass experiment.training.tasks.Task"],
    ),
    "a metric that is no metric": (
        ["dataset=wine", "model=tiny", "+task.metrics.x._target_=collections.OrderedDict"],
        ["task.metrics.x._target_", "torchmetrics.Metric"],
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_data_model_or_loss_stops_with_one_line(name, tmp_path, caplog):
    overrides, says = BAD[name]
    cfg = own(*overrides, tmp_path=tmp_path, tracked=True)
    with pytest.raises(SystemExit) as stopped:
        run_reporting_errors(cfg)
    assert stopped.value.code == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    for fragment in says:
        assert fragment in line, (fragment, line)
    assert not [r for r in all_runs(sqlite_uri(tmp_path)) if r.info.status == "RUNNING"]


def test_each_task_sets_its_default_objective_and_direction():
    regression = own("task=regression", "dataset=diabetes", "model=tiny")
    assert (regression.optimized_metric, regression.optimized_direction) == ("val/mse", "minimize")
    classification = own("dataset=wine", "model=tiny")
    assert (classification.optimized_metric, classification.optimized_direction) == (
        "val/acc",
        "maximize",
    )
    assert np.isclose(own("dataset=wine", "model=tiny").dataset.val_fraction, 0.2)


class _TakesChannels(torch.nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.args = (in_channels, num_classes)


def _open_factory(**kwargs):
    model = torch.nn.Identity()
    model.kwargs = kwargs
    return model


def test_models_get_by_name_only_what_their_signature_takes():
    from omegaconf import OmegaConf

    from experiment.training.builders import build_model

    taking = build_model(
        OmegaConf.create({"_target_": f"{__name__}._TakesChannels"}), (3, 8, 8), 5, 0.1
    )
    assert taking.args == (3, 5)  # no input_shape, no dropout: it takes neither
    node = OmegaConf.create({"_target_": f"{__name__}._open_factory", "depth": 2})
    assert build_model(node, (3, 8, 8), 5, 0.1).kwargs == {"depth": 2, "num_classes": 5}


def test_image_steps_apply_to_image_batches_only_and_as_configured():
    from experiment.data.loaders import BatchTransform

    features = torch.randn(4, 10)
    assert BatchTransform(None, None, CPU)(features) is features  # tabular: as it is
    floats = torch.rand(2, 3, 4, 4)
    assert torch.equal(BatchTransform(None, None, CPU)(floats), floats)  # no mean/std: as is
    normalized = BatchTransform([0.5] * 3, [0.25] * 3, CPU)(floats)
    assert torch.allclose(normalized, (floats - 0.5) / 0.25, atol=1e-6)
    pixels = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.equal(BatchTransform(None, None, CPU)(pixels), torch.ones(1, 1, 2, 2))


def multi_label_table():
    """Three 0/1 labels per row, each a threshold of one feature: a learnable multi-label
    table with its own validation split."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(400, 6, generator=gen)
    labels = (features[:, :3] > 0).float()
    return {"train": (features[:300], labels[:300]), "val": (features[300:], labels[300:])}


def test_a_dict_of_splits_with_multi_label_targets_trains_with_bce(tmp_path):
    cfg = own(
        "dataset=wine",
        f"dataset.source._target_={__name__}.multi_label_table",
        "model=tiny",
        "task.loss=bce_with_logits",
        "trainer.epochs=20",
        tmp_path=tmp_path,
    )
    parts = build_parts(cfg, CPU)
    assert len(parts.data.val.targets) == 100  # the source's own val split, kept
    assert len(parts.data.test.targets) == 60  # test split off train (0.2 of 300)
    assert parts.data.num_outputs == 3 and parts.data.classes is None
    assert experiment.run(cfg) > 0.9  # per-label accuracy on validation


def test_a_task_of_ones_own_weighs_two_heads_and_its_model_answers_both(tmp_path, monkeypatch):
    """examples/two_heads: a Task subclass of one's own (two targets, one loss over two
    heads, its own metrics and predictions), by _target_ with a key of its own."""
    import mlflow

    folder = ROOT / "examples" / "two_heads"
    monkeypatch.syspath_prepend(str(folder))
    cfg = experiment.compose(
        [
            "dataset=wine_parts",
            "model=two_heads",
            "task=class_and_value",
            "task.weight=2.0",
            "trainer.epochs=8",
            "trainer.progress=quiet",
            f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}",
            *tracking_overrides(tmp_path),
        ],
        config_dir=str(folder / "conf"),
    )
    best_acc = experiment.run(cfg)
    (finished,) = all_runs(sqlite_uri(tmp_path))
    assert finished.info.status == "FINISHED" and finished.data.params["task.weight"] == "2.0"
    assert best_acc == pytest.approx(finished.data.metrics["best/value"]) and best_acc > 0.8
    assert {"val/alcohol_mae", "test/alcohol_mae", "test/acc", "test/loss"} <= set(
        finished.data.metrics
    )
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[finished.info.experiment_id], output_format="list"
    )
    model = mlflow.pyfunc.load_model(logged.model_uri)
    rows = np.random.default_rng(0).normal(size=(4, 12)).astype(np.float32)
    answer = model.predict({"input": rows})
    assert set(answer) == {"probabilities", "alcohol"}
    np.testing.assert_allclose(answer["probabilities"].sum(1), 1.0, rtol=1e-5)
    assert answer["alcohol"].shape == (4,)
