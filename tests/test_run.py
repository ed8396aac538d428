"""Real runs, in process, tracked to a real SQLite MLflow store under tmp_path."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from experiment.config.run_config import RunConfig
from experiment.data.loaders import BatchTransform
from experiment.errors import CheckpointError
from experiment.train import run
from experiment.training.builders import build_model
from experiment.training.checkpoint import BEST, LAST, evaluated_weights, load_checkpoint
from tests.conftest import FAST, all_runs, compose_config, sqlite_uri, store_overrides

# Each test trains and tracks a real run: seconds each, so the fast tier leaves them out.
pytestmark = pytest.mark.slow

EPOCH_METRICS = [
    "train/loss",
    "train/acc",
    "val/loss",
    "val/acc",
    "lr",
    "epoch_time_s",
    "samples_per_s",
]


def _run(tmp_path, overrides):
    cfg = compose_config([*overrides, *store_overrides(tmp_path)])
    value = run(cfg)
    (finished,) = all_runs(sqlite_uri(tmp_path))
    return cfg, value, finished


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["trainer.epochs=3"], id="digits-cnn"),
        pytest.param(  # with a moving average of the weights (what is tested and logged)
            # and two batches a step (one-cycle counts steps)
            [
                *FAST,
                "model=mlp",
                "optimizer=sgd",
                "scheduler=onecycle",
                "trainer.ema.decay=0.9",
                "trainer.accumulate_grad_batches=2",
            ],
            id="synthetic-mlp-ema",
        ),
    ],
)
def test_run_logs_params_metrics_and_a_loadable_model(tmp_path, overrides):
    cfg, value, finished = _run(tmp_path, overrides)
    client = MlflowClient(sqlite_uri(tmp_path))
    assert finished.info.status == "FINISHED"

    # Every leaf of the resolved config is a param, by its dotted key.
    params = finished.data.params
    assert params["optimizer.lr"] == str(cfg.optimizer.lr)
    assert params["dataset.batch_size"] == str(cfg.dataset.batch_size)
    assert params["regularization.dropout"] == str(cfg.regularization.dropout)
    assert params["trainer.epochs"] == str(cfg.trainer.epochs)
    assert params["dataset.source._target_"] == cfg.dataset.source._target_

    # One value per epoch for each per-epoch metric, then the test metrics.
    for name in EPOCH_METRICS:
        history = client.get_metric_history(finished.info.run_id, name)
        assert [m.step for m in history] == list(range(cfg.trainer.epochs)), name
    val_acc = [m.value for m in client.get_metric_history(finished.info.run_id, "val/acc")]
    assert value == pytest.approx(max(val_acc))
    metrics = finished.data.metrics
    assert 0.0 <= metrics["test/acc"] <= 1.0 and math.isfinite(metrics["test/loss"])
    assert value > 1.5 / 10  # learned something beyond chance
    assert metrics["peak_rss_mb"] > 50

    # Config and overrides are artifacts; tags name the device.
    artifacts = {a.path for a in client.list_artifacts(finished.info.run_id)}
    assert {"config.yaml", "overrides.yaml"} <= artifacts
    assert finished.data.tags["device"] == "cpu"

    # Learning curves and the test confusion matrix, as real PNG images.
    plots = client.download_artifacts(finished.info.run_id, "plots", str(tmp_path))
    for name in ("learning_curves.png", "confusion_matrix.png"):
        with Image.open(Path(plots) / name) as image:
            assert image.format == "PNG" and min(image.size) > 300

    # The logged model loads back and predicts what the best checkpoint predicts.
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[finished.info.experiment_id], output_format="list"
    )
    # The model is the run's output after its last epoch, its metrics the run's summary:
    # test/*, best/* (not one epoch's values).
    (output,) = client.get_run(finished.info.run_id).outputs.model_outputs
    assert (output.model_id, output.step) == (logged.model_id, cfg.trainer.epochs)
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["test/acc"] == metrics["test/acc"] and "best/value" in linked
    assert not {"train/loss", "val/acc", "lr"} & set(linked)
    loaded = mlflow.pytorch.load_model(logged.model_uri)
    example = np.asarray(mlflow.models.Model.load(logged.model_uri).load_input_example())
    net = build_model(cfg.model, example.shape[1:], cfg.dataset.source.get("num_classes", 10))
    best = load_checkpoint(tmp_path / "checkpoints" / BEST)
    assert ("averaged" in best) == (cfg.trainer.ema.decay is not None)
    net.load_state_dict(evaluated_weights(best))  # the average, where the run kept one
    net.eval()
    # The logged model takes the raw uint8 images and answers probabilities: the run's
    # evaluation normalization and a softmax are inside it.
    assert example.dtype == np.uint8
    dataset = RunConfig.enter(cfg).dataset
    normalize = BatchTransform(dataset.mean, dataset.std, torch.device("cpu")).normalized
    with torch.no_grad():
        expected = net(normalize(torch.from_numpy(example))).softmax(1).numpy()
        got = loaded(torch.from_numpy(example))
    got = got.numpy() if hasattr(got, "numpy") else np.asarray(got)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_model_torch_export_cannot_trace_is_logged_pickled_and_the_run_finishes(tmp_path, caplog):
    """The pt2 format traces the model with torch.export; a model it cannot trace (a
    branch on its input's values) is logged in the pickled format instead, with one
    warning naming why, and loads back and predicts."""
    import experiment

    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "branchy.yaml").write_text(
        "_target_: tests.apps.nets.DataDependent\n"
    )
    overrides = [*FAST, "model=branchy", "tracking.model_format=pt2", *store_overrides(tmp_path)]
    cfg = experiment.compose(overrides, config_dir=str(tmp_path / "conf"))
    run(cfg)
    (finished,) = all_runs(sqlite_uri(tmp_path))
    assert finished.info.status == "FINISHED"
    (warning,) = [r.getMessage() for r in caplog.records if "pt2 graph" in r.getMessage()]
    assert "GuardOnDataDependentSymNode" in warning and "logged pickled" in warning
    models = mlflow.search_logged_models(
        experiment_ids=[finished.info.experiment_id], output_format="list"
    )
    (logged,) = models
    example = np.asarray(mlflow.models.Model.load(logged.model_uri).load_input_example())
    predicted = np.asarray(mlflow.pyfunc.load_model(logged.model_uri).predict(example))
    assert predicted.shape == (len(example), cfg.dataset.source.num_classes)
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=1e-5)  # probabilities


def test_string_labels_train_and_the_logged_model_answers_with_their_names(tmp_path):
    """A source of one's own labelled 'cat' and 'dog': two outputs, no phantom class; the
    logged model's classes are the labels, so its predictions read as them."""
    import experiment

    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "animals.yaml").write_text(
        "source:\n  _target_: tests.apps.sources.string_labels\n"
    )
    overrides = ["dataset=animals", "model=mlp", "trainer.epochs=3", *store_overrides(tmp_path)]
    run(experiment.compose(overrides, config_dir=str(tmp_path / "conf")))
    (finished,) = all_runs(sqlite_uri(tmp_path))
    assert finished.info.status == "FINISHED" and finished.data.metrics["test/acc"] > 0.6
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[finished.info.experiment_id], output_format="list"
    )
    model = mlflow.models.Model.load(logged.model_uri)
    assert model.metadata["experiment.classes"] == ["cat", "dog"]
    example = np.asarray(model.load_input_example())
    assert np.asarray(mlflow.pyfunc.load_model(logged.model_uri).predict(example)).shape == (
        len(example),
        2,
    )


def test_checkpoints_hold_the_full_training_state(tmp_path):
    cfg, _, _ = _run(tmp_path, [*FAST, "tracking.log_model=false"])
    last = load_checkpoint(tmp_path / "checkpoints" / LAST)  # weights_only=True inside
    assert set(last) >= {"model", "optimizer", "scheduler", "epoch", "config", "metrics"}
    assert last["epoch"] == cfg.trainer.epochs - 1
    assert last["config"]["optimizer"]["lr"] == cfg.optimizer.lr
    assert "state" in last["optimizer"] and last["scheduler"]["last_epoch"] == cfg.trainer.epochs
    assert {"best_value", "best_epoch", "history", "extra"} <= set(last)  # what resume needs
    assert len(last["history"]) == cfg.trainer.epochs and last["extra"]["fingerprint"]


class _Payload:
    def __reduce__(self):  # what a booby-trapped checkpoint would run when unpickled
        return (print, ("unpickled code ran",))


def test_checkpoints_refuse_pickled_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects.*refused"):
        load_checkpoint(path)
    assert "unpickled code ran" not in capsys.readouterr().out


def test_early_stopping_stops_on_the_validation_metric(tmp_path):
    # lr so small nothing improves: patience 1 must stop after the second epoch.
    cfg, _, finished = _run(
        tmp_path,
        [
            *FAST,
            "trainer.epochs=10",
            "regularization.early_stopping.patience=1",
            "regularization.early_stopping.min_delta=0.5",
            "tracking.log_model=false",
        ],
    )
    assert finished.data.metrics["epochs_run"] == 2


def test_tracking_none_records_nothing(tmp_path):
    cfg = compose_config([*FAST, "tracking=none", f"trainer.checkpoint_dir={tmp_path / 'ck'}"])
    assert 0 <= run(cfg) <= 1
    assert not (tmp_path / "mlruns").exists()
    assert (tmp_path / "ck" / BEST).exists()


def test_nan_loss_fails_the_run_and_keeps_what_was_logged(tmp_path):
    from experiment.errors import NonFiniteLossError

    cfg = compose_config(
        [*FAST, "optimizer=sgd", "optimizer.lr=1e30", "scheduler=none", *store_overrides(tmp_path)]
    )
    with pytest.raises(NonFiniteLossError, match="optimizer.lr"):
        run(cfg)
    (failed,) = all_runs(sqlite_uri(tmp_path))
    assert failed.info.status == "FAILED"
    assert failed.data.params["optimizer.lr"] == "1e+30"


def test_compiled_model_reports_compile_time_separately(tmp_path):
    _, value, finished = _run(
        tmp_path, [*FAST, "model=mlp", "trainer.compile=true", "tracking.log_model=false"]
    )
    metrics = finished.data.metrics
    assert metrics["compile_time_s"] > 0
    # Compilation happened before the timed epochs: the first epoch is not the slow one.
    client = MlflowClient(sqlite_uri(tmp_path))
    first_epoch = client.get_metric_history(finished.info.run_id, "epoch_time_s")[0].value
    assert first_epoch < metrics["compile_time_s"]
    assert 0 <= value <= 1


def test_each_run_names_its_data_and_system_metrics_are_logged_when_asked(tmp_path):
    """The dataset input (name, digest of the data, source, split sizes) tells runs on
    other data apart; tracking.system_metrics=true adds MLflow's system metrics."""
    store = store_overrides(tmp_path)
    small = [*FAST, "tracking.log_model=false", "tracking.log_plots=false"]
    # Long enough (15 epochs) for the sampler, every 0.2 s, to log even on a loaded machine.
    sampled = ["tracking.system_metrics=true", "tracking.system_metrics_interval=0.2"]
    run(compose_config([*small, *store, *sampled, "trainer.epochs=15"]))
    small.append("trainer.epochs=1")
    run(compose_config([*small, *store]))  # the same data again
    run(compose_config([*small, *store, "dataset.source.num_train=300"]))  # other data
    client = MlflowClient(sqlite_uri(tmp_path))
    runs = sorted(all_runs(sqlite_uri(tmp_path)), key=lambda r: r.info.start_time)
    inputs = [r.inputs.dataset_inputs for r in runs]
    assert [len(i) for i in inputs] == [1, 1, 1]
    first, same, other = (i[0] for i in inputs)
    assert first.dataset.name == "synthetic"  # the source's function, by default
    assert first.dataset.digest == same.dataset.digest != other.dataset.digest
    assert "dataset.source" in first.dataset.source and first.dataset.source_type == "code"
    tags = {t.key: t.value for t in first.tags}
    assert tags["mlflow.data.context"] == "training"
    sizes = {k: int(v) for k, v in tags.items() if k.startswith("split.")}
    assert sizes["split.train"] + sizes["split.val"] == 400 and sizes["split.test"] == 100
    other_tags = {t.key: t.value for t in other.tags}
    assert int(other_tags["split.train"]) + int(other_tags["split.val"]) == 300
    system = [
        k for k in client.get_run(runs[0].info.run_id).data.metrics if k.startswith("system/")
    ]
    assert "system/cpu_utilization_percentage" in system
    assert not [k for k in runs[1].data.metrics if k.startswith("system/")]  # off by default
