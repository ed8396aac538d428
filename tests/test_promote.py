"""From a sweep to a model people use: promote a trial (retrained over seeds, registered as
the champion), predict with it from files, serve it over HTTP; bad input is one line."""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from experiment.config.run_config import RunConfig
from experiment.data.datasets import synthetic
from experiment.data.loaders import BatchTransform
from experiment.serving import predict, promote
from experiment.train import run
from experiment.training.builders import build_model
from experiment.training.checkpoint import BEST, LAST, load_checkpoint
from tests.conftest import (
    FAST,
    compose_config,
    output,
    run_cli,
    sqlite_uri,
    store_overrides,
    sweep_args,
    tracking_overrides,
)
from tests.services import model_server
from tests.test_sweeper import check_every_trial_is_recorded_under_one_parent_run

PROMOTE = ["-m", "experiment.serving.promote"]
PREDICT = ["-m", "experiment.serving.predict"]
STUDY = "promote-study"
# The test split of FAST's synthetic images, as the dataset makes it.
TEST_IMAGES = synthetic(400, 100, 1, 12, 12, 4).test_images.numpy()


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _checkpoint_predictions(run_data, weights: str, images: np.ndarray) -> np.ndarray:
    """What a promoted run's own checkpoint predicts: the run's evaluation normalization,
    the net, a softmax (the path the logged model must equal)."""
    cfg = compose_config(FAST)
    net = build_model(cfg.model, images.shape[1:], 4)
    folder = Path(run_data.params["trainer.checkpoint_dir"])
    net.load_state_dict(load_checkpoint(folder / weights)["model"])
    net.eval()
    dataset = RunConfig.enter(cfg).dataset
    normalize = BatchTransform(dataset.mean, dataset.std, torch.device("cpu")).normalized
    with torch.no_grad():
        return net(normalize(torch.from_numpy(images))).softmax(1).numpy()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_promoted_champion_predicts_and_serves_what_its_checkpoint_predicts(
    tmp_path, capsys, monkeypatch
):
    """A real sweep (what it recorded checked first: test_sweeper's helper), its best trial
    promoted, predicted, served; a second promote on train + val; bad promotes."""
    monkeypatch.chdir(tmp_path)  # where the in-process promote writes its checkpoints
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = tracking_overrides(tmp_path)
    proc = run_cli(sweep_args(storage, tracking, study=STUDY), tmp_path)
    assert proc.returncode == 0, output(proc)
    check_every_trial_is_recorded_under_one_parent_run(tmp_path, STUDY)
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    study = optuna.load_study(study_name=STUDY, storage=storage)
    best = study.best_trial
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "tags.`sweep.parent` = 'true'")

    # Promote the best trial with 2 seeds (and a Hydra override after the options).
    args = ["--study", STUDY, "--storage", storage, "--seeds", "2", "--name", "synthetic-cnn"]
    proc = run_cli([*args, "--tracking-uri", uri, "trainer.epochs=3"], tmp_path, program=PROMOTE)
    assert proc.returncode == 0, output(proc)
    assert f"Trial {best.number} of study '{STUDY}': val/acc {best.value:.4f}" in proc.stdout
    assert "test/acc: mean" in proc.stdout and "epoch 3/3" in proc.stdout  # progress shown
    assert "Registered synthetic-cnn version 1 as models:/synthetic-cnn@champion." in proc.stdout

    # Two seed runs nested under the sweep's parent run, tagged with the trial they retrain.
    runs = client.search_runs(experiments, order_by=["start_time"])
    promoted = [r for r in runs if "promote.trial" in r.data.tags]
    assert [r.data.tags["promote.seed"] for r in promoted] == ["0", "1"]
    for r in promoted:
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["promote.trial"] == str(best.number)
        assert r.data.params["trainer.epochs"] == "3" and r.info.status == "FINISHED"
        assert r.data.params["optimizer.lr"] == repr(best.params["optimizer.lr"])
    tests = [r.data.metrics["test/acc"] for r in promoted]
    mean = f"test/acc: mean {np.mean(tests):.4f}, std {np.std(tests, ddof=1):.4f}"
    assert mean in proc.stdout

    # The registry: one version, the alias, tags and a description with the metrics.
    version = client.get_model_version_by_alias("synthetic-cnn", "champion")
    assert str(version.version) == "1"
    chosen = max(promoted, key=lambda r: r.data.metrics["best/value"])  # best on validation
    assert version.run_id == chosen.info.run_id
    assert version.tags["study"] == STUDY and version.tags["trial"] == str(best.number)
    assert version.tags["seed"] == chosen.data.tags["promote.seed"]
    assert len(version.tags["config_fingerprint"]) == 40 and version.tags["git_commit"]
    assert "test/acc: mean" in version.description

    # Predict from the registered URI: a .npy of raw images and a folder of PNG files.
    np.save(tmp_path / "images.npy", TEST_IMAGES[:10])
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(TEST_IMAGES[i, 0]).save(folder / f"{i}.png")
    champion = "models:/synthetic-cnn@champion"
    expected = _checkpoint_predictions(chosen.data, BEST, TEST_IMAGES[:10])
    predicted = run_cli(
        [champion, "images.npy", "--tracking-uri", uri],
        tmp_path,
        program=PREDICT,
        split_stderr=True,
    )
    assert predicted.returncode == 0, output(predicted)
    rows = _csv(predicted.stdout)
    assert [r["input"] for r in rows] == [str(i) for i in range(10)]
    assert [int(r["class"]) for r in rows] == expected.argmax(1).tolist()
    np.testing.assert_allclose([float(r["probability"]) for r in rows], expected.max(1), rtol=1e-4)
    out = tmp_path / "pngs.csv"
    code = predict.main([champion, str(folder), "--tracking-uri", uri, "--out", str(out)])
    assert code == 0
    pngs = _csv(out.read_text())
    assert [Path(r["input"]).name for r in pngs] == ["0.png", "1.png", "2.png"]
    assert [r["class"] for r in pngs] == [r["class"] for r in rows[:3]]

    # Served: raw uint8 pixels in, the same probabilities out.
    with model_server(tmp_path / "serve", champion, uri) as server:
        body = json.dumps({"inputs": TEST_IMAGES[:10].tolist()}).encode()
        request = urllib.request.Request(
            server.url + "/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.load(response)["predictions"])
    assert served.shape == (10, 4)
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)

    # A second promote, on train + val for the trial's best epoch count: version 2 takes
    # the alias, version 1 stays; its model is the last epoch's (val is no held-out set).
    args = ["--parent-run", parent.info.run_id, "--trial", str(best.number), "--seeds", "1"]
    code = promote.main([*args, "--train-on-val", "--name", "synthetic-cnn", "--tracking-uri", uri])
    assert code == 0
    second = client.get_model_version_by_alias("synthetic-cnn", "champion")
    assert str(second.version) == "2" and second.tags["train_on_val"] == "true"
    assert client.get_model_version("synthetic-cnn", "1").run_id == chosen.info.run_id
    retrained = client.get_run(second.run_id)
    trial_run = client.get_run(best.user_attrs["mlflow_run_id"])
    assert retrained.data.params["trainer.epochs"] == str(
        int(trial_run.data.metrics["best/epoch"]) + 1
    )
    assert retrained.data.params["dataset.train_on_val"] == "True"
    model = mlflow.pyfunc.load_model("models:/synthetic-cnn/2")
    last = _checkpoint_predictions(retrained.data, LAST, TEST_IMAGES[:10])
    np.testing.assert_allclose(model.predict(TEST_IMAGES[:10]), last, rtol=1e-4, atol=1e-6)

    # Bad input: one line on stderr, exit 2, and the registry untouched.
    _bad_promotes(capsys, storage, uri, study)
    assert len(client.search_model_versions("name = 'synthetic-cnn'")) == 2


def _bad_promotes(capsys, storage: str, uri: str, study) -> None:
    unfinished = study.ask().number  # a trial still RUNNING in the real storage
    cases = {
        "No study 'nope'": ["--study", "nope", "--storage", storage],
        f"has no trial 99 (trials 0..{unfinished})": ["--study", STUDY, "--trial", "99"],
        f"Trial {unfinished} of study '{STUDY}' is RUNNING": [
            "--study",
            STUDY,
            "--trial",
            str(unfinished),
        ],
        "Invalid registered model name 'bad/name'": ["--study", STUDY, "--name", "bad/name"],
        "No MLflow run 0123": ["--parent-run", "0123"],
        "No Optuna storage at": ["--study", STUDY, "--storage", "sqlite:///missing.db"],
    }
    for expected, args in cases.items():
        if "--storage" not in args:
            args = [*args, "--storage", storage]
        capsys.readouterr()
        assert promote.main([*args, "--tracking-uri", uri]) == 2, args
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # trains a model first
def test_predictions_of_a_regression_model_from_csv_rows(tmp_path, capsys):
    """A tabular regression's logged model: rows of a CSV in (with a header), one column
    per target out, equal to the best checkpoint's outputs; rows of the wrong width and a
    file of the wrong kind are one line and exit 2."""
    data = [
        "task=regression",
        "dataset=synthetic_regression",
        "dataset.source.num_train=200",
        "dataset.source.num_test=20",
        "dataset.source.features=5",
        "dataset.source.targets=2",
        "model=mlp",
        "trainer.epochs=2",
    ]
    cfg = compose_config([*data, *store_overrides(tmp_path), "trainer.progress=quiet"])
    run(cfg)
    uri = sqlite_uri(tmp_path)
    client = MlflowClient(uri)
    (finished,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    rows = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    table = tmp_path / "rows.csv"
    table.write_text("a,b,c,d,e\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    model_uri = f"runs:/{finished.info.run_id}/model"
    assert predict.main([model_uri, str(table), "--tracking-uri", uri]) == 0
    written = _csv(capsys.readouterr().out)
    assert list(written[0]) == ["input", "target_0", "target_1"]
    net = build_model(cfg.model, (5,), 2)
    net.load_state_dict(load_checkpoint(tmp_path / "checkpoints" / BEST)["model"])
    net.eval()
    with torch.no_grad():
        expected = net(torch.from_numpy(rows)).numpy()
    got = np.array([[float(r["target_0"]), float(r["target_1"])] for r in written])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    np.save(tmp_path / "wrong.npy", np.zeros((3, 4), dtype=np.float32))
    for name, message in (
        ("wrong.npy", "holds inputs of shape [3, 4]; the model takes N x 5 (float32)"),
        ("rows.txt", "Cannot read"),
        ("missing.csv", "No such input"),
    ):
        (tmp_path / "rows.txt").write_text("1,2\n")
        assert predict.main([model_uri, str(tmp_path / name), "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert predict.main(["models:/nothing@champion", str(table), "--tracking-uri", uri]) == 2
    assert "Cannot load model models:/nothing@champion" in capsys.readouterr().err
