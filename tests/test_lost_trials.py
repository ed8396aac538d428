"""Lost trials continue: a sweep worker killed (SIGKILL) or silent (SIGSTOP) mid-trial is
replaced, and the retry of its trial resumes from the lost trial's last checkpoint in the
same MLflow run. Real 2-worker sweeps of the project's app in subprocesses, a real Optuna
SQLite storage and a real MLflow SQLite store under tmp_path."""

from __future__ import annotations

import os
import signal

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import (
    FAST,
    running_trial_run,
    sqlite_uri,
    start_cli,
    stop_group,
    sweep_args,
    tracking_overrides,
)

pytestmark = pytest.mark.slow
EPOCHS = 16


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_a_killed_and_a_stopped_worker_lose_no_epochs_and_no_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    no_artifacts = ["tracking.log_model=false", "tracking.log_plots=false"]
    tracking = [*tracking_overrides(tmp_path), *no_artifacts]
    data = [*FAST, "dataset.source.num_train=1200"]  # epochs long enough to stop one
    args = sweep_args(
        storage,
        tracking,
        f"trainer.epochs={EPOCHS}",
        "regularization.early_stopping.patience=null",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.pruner=none",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=4",
        n_trials=3,
        data=data,
    )
    client = MlflowClient(sqlite_uri(tmp_path))
    proc = start_cli(args, tmp_path)
    try:
        killed_run = running_trial_run(client, 3)
        os.kill(int(killed_run.data.tags["process"].rsplit(":", 1)[1]), signal.SIGKILL)
        stopped_run = running_trial_run(client, 3, skip={killed_run.info.run_id})
        os.kill(int(stopped_run.data.tags["process"].rsplit(":", 1)[1]), signal.SIGSTOP)
        out, _ = proc.communicate(timeout=240)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, out[-4000:]

    study = optuna.load_study(study_name="test-study", storage=storage)
    by_number = {t.number: t for t in study.trials}
    lost = {int(r.data.tags["optuna.trial"]): r for r in (killed_run, stopped_run)}
    reasons = {n: by_number[n].system_attrs["fail_reason"] for n in lost}
    assert reasons[int(killed_run.data.tags["optuna.trial"])].startswith("process killed")
    assert reasons[int(stopped_run.data.tags["optuna.trial"])].startswith("heartbeat lost")
    # Lost trials do not count: the study ends with exactly n_trials, all complete.
    counted = [t for t in study.trials if t.number not in lost]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    for number, lost_run in lost.items():
        (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
        assert retry.params == by_number[number].params
        # The retry continued the lost trial's run: one run, FINISHED, each epoch once.
        assert retry.user_attrs["mlflow_run_id"] == lost_run.info.run_id
        run = client.get_run(lost_run.info.run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial"] == str(retry.number)
        assert run.data.tags["optuna.retry_of"] == str(number)
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
        assert sorted(steps) == list(range(EPOCHS))
        # The pruner sees the whole curve of the retried trial.
        assert sorted(retry.intermediate_values) == list(range(EPOCHS))
    logs = "\n".join(p.read_text() for p in (tmp_path / "multirun").rglob("*.log"))
    continued = [line for line in logs.splitlines() if "Continuing trial" in line]
    assert len(continued) == 2, logs[-3000:]
    assert all("at epoch 1 " not in line for line in continued)  # not from scratch
    text = out
    lines = [line for line in text.splitlines() if "was lost" in line]
    assert len(lines) == 2, text[-4000:]
    assert "(exit code -9)" in lines[0] and "(no heartbeat for" in lines[1], lines
