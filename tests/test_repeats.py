"""hydra.sweeper.repeats: each configuration trained with several seeds, judged by the
mean, each seed a run nested under its trial's run, and a configuration clearly worse
after two seeds pruned before its third. A real sweep of the project's app in a
subprocess, a real Optuna SQLite storage and a real MLflow SQLite store under tmp_path."""

from __future__ import annotations

import statistics

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import (
    all_runs,
    output,
    run_cli,
    sqlite_uri,
    sweep_args,
    tracking_overrides,
)

pytestmark = pytest.mark.slow


def configuration(lr: float, batch_size: int, dropout: float) -> str:
    """One enqueued configuration, in Hydra's override syntax."""
    return (
        f"{{optimizer.lr: {lr}, dataset.batch_size: {batch_size}, "
        f"regularization.dropout: {dropout}, regularization.weight_decay: 1.0e-06}}"
    )


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_repeated_trials_are_judged_by_their_mean_and_a_worse_one_is_pruned_early(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = [
        *tracking_overrides(tmp_path),
        "tracking.log_model=false",
        "tracking.log_plots=false",
    ]
    good = [configuration(lr, 32, 0.0) for lr in (0.01, 0.005, 0.02)]
    queued = ", ".join([*good, configuration(0.0001, 256, 0.5)])  # the last one: worse
    args = sweep_args(
        storage,
        tracking,
        "trainer.epochs=3",
        "trainer.seed=7",
        "hydra.sweeper.repeats=3",
        f"hydra.sweeper.enqueue_trials=[{queued}]",
        n_trials=4,
    )
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, output(proc)

    study = optuna.load_study(study_name="test-study", storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    (pruned,) = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(complete) == 3 and pruned.params["optimizer.lr"] == 0.0001
    for trial in complete:
        seeds = trial.user_attrs["seed_values"]
        assert len(seeds) == 3
        assert trial.value == pytest.approx(statistics.fmean(seeds))
        assert trial.user_attrs["value_std"] == pytest.approx(statistics.stdev(seeds))
        assert trial.intermediate_values == dict(enumerate(seeds))  # one report per seed
    assert len(pruned.user_attrs["seed_values"]) == 2  # no third seed
    assert study.best_trial.value == max(t.value for t in complete)  # the best mean

    runs = all_runs(sqlite_uri(tmp_path))
    trial_runs = {r.info.run_id: r for r in runs if r.data.tags.get("optuna.repeats") == "3"}
    assert len(trial_runs) == 4
    for trial in study.trials:
        run = trial_runs[trial.user_attrs["mlflow_run_id"]]
        seed_runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
        expected = 3 if trial.state == TrialState.COMPLETE else 2
        assert sorted(r.data.params["trainer.seed"] for r in seed_runs) == [
            str(7 + i) for i in range(expected)
        ]
        assert sorted(r.data.tags["optuna.repeat"] for r in seed_runs) == [
            str(i) for i in range(expected)
        ]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == trial.state.name
        if trial.state == TrialState.COMPLETE:
            assert run.data.metrics["value_mean"] == pytest.approx(trial.value)
            assert run.data.metrics["value_std"] == pytest.approx(trial.user_attrs["value_std"])
    client = MlflowClient(sqlite_uri(tmp_path))
    assert client.get_run(next(iter(trial_runs))).data.params  # the trial's params on its run

    (results_file,) = (tmp_path / "multirun").rglob("optimization_results.yaml")
    results = yaml.safe_load(results_file.read_text())
    assert results["best_value_std"] == pytest.approx(study.best_trial.user_attrs["value_std"])
    assert sorted(s["trial"] for s in results["seeds"]) == sorted(t.number for t in complete)
    assert "std" in output(proc).split("best first:")[1].splitlines()[1]  # the table's header
