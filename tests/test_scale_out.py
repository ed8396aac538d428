"""Scaling out as the README shows it: several sweep commands share one study in a real
PostgreSQL database and track to one real MLflow server over HTTP."""

from __future__ import annotations

import time

import mlflow
import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from experiment.training.checkpoint import load_checkpoint
from tests.conftest import FAST, files_holding, start_cli, stop_group, sweep_args, wait_for_line
from tests.services import POSTGRES_PASSWORD

pytestmark = pytest.mark.slow
TRACKING_PASSWORD = "trk-s3cret-Pa55"


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_three_sweep_processes_share_one_postgres_study_and_one_mlflow_server(
    tmp_path, postgres, mlflow_server
):
    """...and ride out an 8-second outage of the database: stopped and started again while
    they train (one of them with two workers)."""
    postgres_url = postgres.url
    tracking_uri = mlflow_server.url.replace("http://", f"http://user:{TRACKING_PASSWORD}@")
    tracking = [
        f"tracking.uri={tracking_uri}",
        "tracking.experiment_name=scale-out",
        "tracking.log_plots=false",  # per-run plots are test_run's subject
    ]
    # The database password handed over in each of the documented ways: in the URL, from
    # an environment variable by interpolation (`${oc.env:...}`), from a ~/.pgpass file.
    user, address = postgres_url.removeprefix("postgresql://").split("@")
    without_password = f"postgresql://{user.split(':')[0]}@{address}"
    pgpass = tmp_path / "home" / ".pgpass"
    pgpass.parent.mkdir()
    host, port_db = address.split(":")
    pgpass.write_text(
        f"{host}:{port_db.split('/')[0]}:*:{user.split(':')[0]}:{POSTGRES_PASSWORD}\n"
    )
    pgpass.chmod(0o600)  # libpq ignores a file others can read
    ways = [
        (postgres_url, {}),
        (
            postgres_url.replace(POSTGRES_PASSWORD, "${oc.env:STUDY_DB_PASSWORD}"),
            {"STUDY_DB_PASSWORD": POSTGRES_PASSWORD},
        ),
        (without_password, {"PGPASSFILE": str(pgpass)}),
    ]
    logs, processes = [], []
    try:
        for index, (storage, env) in enumerate(ways):  # three commands, as on three machines
            workers = ["hydra.sweeper.n_jobs=2"] if index == 0 else []
            args = sweep_args(storage, tracking, *workers, n_trials=12, study="shared")
            logs.append(tmp_path / f"sweep{index}.log")
            workdir = tmp_path / f"machine{index}"
            workdir.mkdir()
            with logs[-1].open("w") as log:
                processes.append(start_cli(args, workdir, stdout=log, env=env))
        wait_for_trials(postgres_url, "shared", 3)
        postgres.stop()  # an outage while trials train, report and finish
        time.sleep(8)
        postgres.start()
        codes = [p.wait(timeout=400) for p in processes]
    finally:
        for proc in processes:
            stop_group(proc)
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0, 0], "\n\n".join(outputs)

    # The outage was waited out, said once per process that met it, with its end.
    waited = [text for text in outputs if "does not answer" in text]
    assert waited and all("The study storage is back after" in text for text in waited)

    # Optuna: exactly 12 trials, all finished, distinct numbers and parameter sets.
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.trials
    assert len(trials) == 12, [(t.number, t.state) for t in trials]
    unfinished = [
        (t.number, t.state.name, t.system_attrs.get("fail_reason"), t.system_attrs.get("error"))
        for t in trials
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)
    ]
    assert not unfinished, "\n\n".join([str(unfinished), *outputs])
    assert sorted(t.number for t in trials) == list(range(12))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 12
    assert study.user_attrs["coordinators"] == 3
    assert len({t.system_attrs["worker"] for t in trials}) >= 2  # the work was shared

    # MLflow over HTTP: one parent, twelve children under it, none left RUNNING.
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("scale-out")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("sweep.parent") != "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == list(range(12))
    assert {c.info.status for c in children} == {"FINISHED"}
    assert parents[0].data.metrics["trials_complete"] + parents[0].data.metrics.get(
        "trials_pruned", 0
    ) == pytest.approx(12)

    # A logged model comes back through the server and predicts.
    complete = next(c for c in children if c.data.tags["optuna.state"] == "COMPLETE")
    mlflow.set_tracking_uri(mlflow_server.url)
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{complete.info.run_id}'",
        output_format="list",
    )
    model = mlflow.pytorch.load_model(logged.model_uri)
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 12, 12), dtype=np.uint8)
    import torch

    with torch.no_grad():
        probabilities = model(torch.from_numpy(images))  # raw pixels in, probabilities out
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(1).numpy(), 1.0, rtol=1e-5)

    # Neither password is in any log line, param, tag or file: the sweeps' folders (.hydra,
    # checkpoints, logs), the MLflow server's store and artifacts, the study's attributes.
    holding = files_holding(tmp_path, POSTGRES_PASSWORD, TRACKING_PASSWORD)
    assert holding == [pgpass], holding
    assert "${oc.env:STUDY_DB_PASSWORD}" in "".join(
        p.read_text() for p in (tmp_path / "machine1").rglob("hydra.yaml")
    )
    attributes = repr([study.user_attrs, *[(t.user_attrs, t.system_attrs) for t in trials]])
    assert POSTGRES_PASSWORD not in attributes and TRACKING_PASSWORD not in attributes
    for text in outputs:
        assert POSTGRES_PASSWORD not in text and TRACKING_PASSWORD not in text
    for run in runs:
        recorded = [*run.data.params.values(), *run.data.tags.values()]
        assert not [v for v in recorded if POSTGRES_PASSWORD in v or TRACKING_PASSWORD in v]
    # The storage the parent names: masked, whichever way its creator had the password.
    storage_tag = parents[0].data.tags["optuna.storage"]
    assert (
        storage_tag.startswith("postgresql://experiment") and POSTGRES_PASSWORD not in storage_tag
    )


def wait_for_trials(url: str, study_name: str, finished: int, timeout: float = 180) -> None:
    """Until `finished` trials of the study have finished; through one engine (a storage
    a poll would hold a connection each, and PostgreSQL takes a hundred)."""
    storage = optuna.storages.RDBStorage(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                study = optuna.load_study(study_name=study_name, storage=storage)
                if len([t for t in study.trials if t.state.is_finished()]) >= finished:
                    return
            except KeyError:  # not created yet
                pass
            time.sleep(0.5)
    finally:
        storage.engine.dispose()
    raise AssertionError(f"{finished} trials did not finish within {timeout}s")


def test_tracking_server_failing_mid_run_keeps_the_checkpoints(tmp_path, mlflow_server):
    checkpoints = tmp_path / "checkpoints"
    args = [
        *FAST,
        "dataset.source.num_train=3000",
        "trainer.epochs=40",
        "regularization.early_stopping.patience=null",
        f"tracking.uri={mlflow_server.url}",
        f"trainer.checkpoint_dir={checkpoints}",
    ]
    # No retries: the failure shows at once (MLflow's default rides out minutes of outage).
    proc = start_cli(args, tmp_path, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    wait_for_line(proc, "epoch 2/40")
    mlflow_server.stop()
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 2, rest
    assert "The MLflow tracking store failed in epoch" in rest, rest
    assert str(checkpoints) in rest and "trainer.resume=auto" in rest
    assert "Traceback" not in rest
    state = load_checkpoint(checkpoints / "last.pt")  # weights_only=True
    assert state["epoch"] >= 1 and state["model"]
    assert (checkpoints / "best.pt").exists()
