"""Real sweeps: Hydra multiruns in subprocesses, a real Optuna SQLite storage, a real
MLflow SQLite store, all under tmp_path."""

from __future__ import annotations

import csv
import io
import os
import signal
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from PIL import Image

from experiment.serving.compare import compare
from experiment.training.builders import build_model
from tests.conftest import (
    FAST,
    all_runs,
    output,
    run_cli,
    run_config,
    running_trial_run,
    sqlite_uri,
    start_cli,
    stop_group,
    sweep_args,
    tracking_overrides,
    wait_for_line,
)
from tests.test_transfer import photo_folder

pytestmark = pytest.mark.slow
STUDY = "test-study"
COMPARE = ["-m", "experiment.serving.compare"]


def sweep(tmp_path, *extra, n_trials=4, log_model=False, log_plots=False):
    """A sweep with its study and MLflow store under tmp_path."""
    # Per-run plots are checked by test_run and test_browser; most sweeps here skip them.
    tracking = [
        *tracking_overrides(tmp_path),
        f"tracking.log_model={str(log_model).lower()}",
        f"tracking.log_plots={str(log_plots).lower()}",
    ]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    return sweep_args(storage, tracking, *extra, n_trials=n_trials, study=STUDY)


def load_study(tmp_path, study_name: str = STUDY) -> optuna.Study:
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def split_runs(tmp_path):
    runs = all_runs(sqlite_uri(tmp_path))
    parents = [r for r in runs if r.data.tags.get("sweep.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("sweep.parent") != "true"]
    return parents, children


def check_every_trial_is_recorded_under_one_parent_run(tmp_path, study_name: str) -> None:
    """What a finished 4-trial sweep of the project's app (models and plots logged, its
    study and store under tmp_path) recorded: the study, one MLflow parent run with its
    summary and plots, a run and a logged model per trial, and `experiment-compare`'s
    listing. Called by the promote test on its own sweep, before anything is promoted (one
    sweep checked for both)."""
    study = load_study(tmp_path, study_name)
    assert len(study.trials) == 4 and all(t.state.is_finished() for t in study.trials)
    assert set(study.trials[0].params) == {
        "optimizer.lr",
        "dataset.batch_size",
        "regularization.dropout",
        "regularization.weight_decay",
    }

    (parent,), children = split_runs(tmp_path)
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["optuna.trial"]) for c in children) == [0, 1, 2, 3]
    assert len({c.info.run_name for c in children}) == 4  # unique, readable names
    for child in children:
        trial = study.trials[int(child.data.tags["optuna.trial"])]
        assert child.data.tags["optuna.state"] == trial.state.name
        assert float(child.data.params["optimizer.lr"]) == pytest.approx(
            trial.params["optimizer.lr"]
        )
        assert child.data.params["dataset.batch_size"] == str(trial.params["dataset.batch_size"])

    # The parent holds the summary, the best params and the study plots.
    counts = {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED")}
    assert parent.data.metrics["trials_complete"] == counts["COMPLETE"]
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["best.trial"] == str(study.best_trial.number)
    client = MlflowClient(sqlite_uri(tmp_path))
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/optimization_history.png", "plots/parallel_coordinate.png"} <= plots
    assert parent.info.status == "FINISHED"
    (results,) = (tmp_path / "multirun").rglob("optimization_results.yaml")
    assert f"best_value: {study.best_value}" in results.read_text()
    # Every trial logged its model.
    mlflow.set_tracking_uri(sqlite_uri(tmp_path))
    models = mlflow.search_logged_models(
        experiment_ids=[parent.info.experiment_id], output_format="list"
    )
    assert {m.source_run_id for m in models} == {
        c.info.run_id for c in children if c.data.tags["optuna.state"] == "COMPLETE"
    }

    # experiment-compare: the sweep's trials best first, the swept params as columns.
    uri = ["--tracking-uri", sqlite_uri(tmp_path)]
    listed = run_cli([parent.info.run_id, "--format", "csv", *uri], tmp_path, program=COMPARE)
    assert listed.returncode == 0, output(listed)
    rows = list(csv.reader(io.StringIO(listed.stdout)))
    header, rows = rows[0], rows[1:]
    assert header[:3] == ["run", "state", "val/acc (best)"]
    swept = {"dataset.batch_size", "optimizer.lr", "regularization.dropout"}
    assert swept <= set(header) and "trainer.epochs" not in header  # the same in all
    assert sorted(r[0] for r in rows) == sorted(c.info.run_name for c in children)
    values = [float(r[2]) for r in rows if r[2]]
    assert values == sorted(values, reverse=True) and len(values) == 4  # best first
    by_name = {c.info.run_name: c for c in children}
    for row in rows:
        run = by_name[row[0]]
        assert row[1] == run.data.tags["optuna.state"]
        assert float(row[2]) == pytest.approx(run.data.metrics["best/value"])
        assert row[header.index("optimizer.lr")] == run.data.params["optimizer.lr"]
    table = compare("default", sqlite_uri(tmp_path))  # by experiment, as Markdown
    assert table.splitlines()[1].startswith("| --- |") and len(table.splitlines()) == 2 + 4
    unknown = run_cli(["nope", *uri], tmp_path, program=COMPARE, split_stderr=True)
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.count("\n") == 1 and "'nope' is neither" in unknown.stderr


def test_a_sweep_killed_twice_resumes_its_study_and_ends_with_exactly_n_trials(tmp_path):
    """SIGKILL mid-trial, then SIGTERM mid-retry (recorded as KILLED by the sweep itself);
    the same command then resumes the study (not a new one) and the parent run, and the
    killed trial's configuration continues in its own MLflow run until it ends."""
    args = sweep(
        tmp_path, "trainer.epochs=6", "regularization.early_stopping.patience=null", n_trials=4
    )
    proc = start_cli(args, tmp_path)
    wait_for_line(proc, "trial 0 COMPLETE", "trial 0 PRUNED")
    wait_for_line(proc, "epoch 2/6")  # trial 1 is training
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    running = [t for t in load_study(tmp_path).trials if t.state == TrialState.RUNNING]
    assert len(running) == 1, [t.state for t in load_study(tmp_path).trials]
    first_killed = running[0].number

    proc = start_cli(args, tmp_path)  # stopped while the retry of trial 1 trains
    wait_for_line(proc, "epoch 3/6")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in out, out[-4000:]
    (parent,), children = split_runs(tmp_path)
    assert out.strip().splitlines()[-1].startswith("Stopped by SIGTERM: MLflow run ")
    assert out.strip().endswith(
        f"the sweep's MLflow run {parent.info.run_id} marked KILLED; the same command "
        "continues the study, retrying the 1 trial cut short once."
    )
    assert parent.info.status == "KILLED"
    assert not [c for c in children if c.info.status == "RUNNING"]
    (continued,) = [c for c in children if c.data.tags["optuna.trial"] != "0"]
    assert continued.info.status == "KILLED" and continued.data.tags["optuna.retry_of"] == "1"

    resumed = run_cli(args, tmp_path)
    assert resumed.returncode == 0, output(resumed)
    assert "1 of 4 trials already counted" in output(resumed)  # the same study, resumed
    study = load_study(tmp_path)
    killed = [t for t in study.trials if t.system_attrs.get("fail_reason") == "process killed"]
    assert [t.state for t in killed] == [TrialState.FAIL] * 2
    assert killed[0].number == first_killed and killed[1].user_attrs["retry_of"] == first_killed
    # Killed trials do not use up the budget: their retries take their place.
    counted = [t for t in study.trials if t not in killed]
    assert len(counted) == 4 and all(t.state.is_finished() for t in counted)
    for trial in killed:  # each killed attempt was continued once, with its configuration
        retries = [t for t in study.trials if t.user_attrs.get("retry_of") == trial.number]
        assert len(retries) == 1 and retries[0].params == killed[0].params
    assert len({t.number for t in study.trials}) == len(study.trials)
    (parent,), children = split_runs(tmp_path)  # one parent run, resumed each time
    assert parent.info.status == "FINISHED"
    # One MLflow run per configuration: the killed one continued in its run to the end,
    # each epoch logged once.
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    (run,) = [c for c in children if c.info.run_id == continued.info.run_id]
    client = MlflowClient(sqlite_uri(tmp_path))
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss"))
    assert steps == list(range(len(steps))) and len(steps) >= 3


def test_pruned_trials_are_pruned_in_optuna_and_tagged_in_mlflow(tmp_path):
    # A threshold no accuracy reaches: every trial is pruned at its first report.
    proc = run_cli(
        sweep(
            tmp_path,
            "trainer.epochs=5",
            "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",
            n_trials=2,
        ),
        tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    study = load_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in study.trials)
    (parent,), children = split_runs(tmp_path)
    assert {c.data.tags["optuna.state"] for c in children} == {"PRUNED"}
    assert "trial 0 PRUNED" in output(proc)
    # tracking.log_plots=false holds for the study's plots too.
    assert MlflowClient(sqlite_uri(tmp_path)).list_artifacts(parent.info.run_id, "plots") == []


def test_a_failing_trial_does_not_stop_the_sweep(tmp_path):
    # lr 1e30 diverges (NaN loss); the random sampler with this seed draws both values.
    proc = run_cli(
        sweep(
            tmp_path,
            "optimizer=sgd",
            "scheduler=none",
            "optimizer.lr=choice(0.05, 1e30)",
            "hydra.sweeper.sampler=random",
            "hydra.sweeper.seed=4",
            n_trials=4,
        ),
        tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    study = load_study(tmp_path)
    states = {t.params["optimizer.lr"]: t.state for t in study.trials}
    assert states == {0.05: TrialState.COMPLETE, 1e30: TrialState.FAIL}
    assert len(study.trials) == 4
    _, children = split_runs(tmp_path)
    failed = [c for c in children if c.data.params["optimizer.lr"] == "1e+30"]
    assert failed and {c.info.status for c in failed} == {"FAILED"}
    assert "NonFiniteLossError" in output(proc)


def test_parallel_workers_run_trials_in_long_lived_processes(tmp_path):
    proc = run_cli(sweep(tmp_path, "hydra.sweeper.n_jobs=2", n_trials=6, log_plots=True), tmp_path)
    assert proc.returncode == 0, output(proc)
    study = load_study(tmp_path)
    assert len(study.trials) == 6 and all(t.state.is_finished() for t in study.trials)
    (parent,), children = split_runs(tmp_path)
    client = MlflowClient(sqlite_uri(tmp_path))
    drawn = {}
    for child in children:
        if child.data.tags["optuna.state"] != "COMPLETE":
            continue
        folder = Path(
            client.download_artifacts(child.info.run_id, "plots", str(tmp_path / child.info.run_id))
        )
        assert sorted(p.name for p in folder.iterdir()) == [
            "confusion_matrix.png",
            "learning_curves.png",
        ]
        for png in folder.iterdir():
            with Image.open(png) as image:
                assert image.format == "PNG" and min(image.size) > 300
        drawn[child.info.run_id] = (folder / "learning_curves.png").read_bytes()
    assert len(drawn) >= 2 and len(set(drawn.values())) == len(drawn)  # each its own run's
    assert {"plots/optimization_history.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "plots")
    }
    processes = [c.data.tags["process"] for c in children]
    assert len(children) == 6 and len(set(processes)) == 2  # two workers, reused
    sweep_process = study.trials[0].system_attrs["worker"]  # the process that asked
    assert sweep_process not in processes
    # Workers keep quiet: the console has the sweep's line per trial, no epoch lines.
    assert "epoch 1/2" not in output(proc)
    assert sum(f"trial {n} " in output(proc) for n in range(6)) == 6
    assert "best first:" in output(proc)


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_a_parallel_sweep_stopped_by_sigterm_ends_cleanly_and_the_same_command_finishes_it(
    tmp_path,
):
    args = sweep(
        tmp_path,
        "hydra.sweeper.n_jobs=2",
        "trainer.epochs=30",
        "regularization.early_stopping.patience=null",
        "hydra.sweeper.pruner=none",
        n_trials=2,
    )
    client = MlflowClient(sqlite_uri(tmp_path))
    proc = start_cli(args, tmp_path)
    try:
        first = running_trial_run(client, 2)  # both workers are training
        running_trial_run(client, 2, skip={first.info.run_id})
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        stop_group(proc)
    assert proc.returncode == 143 and "Traceback" not in out, out[-4000:]
    last = out.strip().splitlines()[-1]
    (parent,), children = split_runs(tmp_path)
    assert last == (
        f"Stopped by SIGTERM: the sweep's MLflow run {parent.info.run_id} marked KILLED; the "
        "same command continues the study, retrying the 2 trials cut short once."
    )
    assert parent.info.status == "KILLED"
    assert len(children) == 2 and {c.info.status for c in children} == {"KILLED"}
    assert [t.state for t in load_study(tmp_path).trials] == [TrialState.RUNNING] * 2

    resumed = run_cli(args, tmp_path)
    assert resumed.returncode == 0, output(resumed)
    study = load_study(tmp_path)
    states = [(t.state, t.user_attrs.get("retry_of")) for t in study.trials]
    retried = sorted(states[2:], key=lambda state: state[1])
    assert states[:2] == [(TrialState.FAIL, None)] * 2, states  # failed as killed, not counted
    assert retried == [(TrialState.COMPLETE, 0), (TrialState.COMPLETE, 1)], states
    (parent,), children = split_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    # Each stopped trial continued in its own MLflow run, to the end.
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}


def test_parallel_sweep_over_an_image_folder_on_the_dataloader_path(tmp_path):
    # No cache: the folder is read by DataLoader worker processes inside each sweep worker.
    folder = photo_folder(tmp_path / "photos", per_class=8, size=24)
    data = [
        "dataset=image_folder",
        f"dataset.source.path={folder}",
        "dataset.cache_dir=null",
        "dataset.num_workers=2",
        "dataset.source.image_size=16",
        "dataset.batch_size=8",
        "trainer.epochs=1",
    ]
    args = sweep_args(
        f"sqlite:///{tmp_path / 'optuna.db'}",
        ["tracking=none"],
        "hydra.sweeper.n_jobs=2",
        n_trials=2,
        study=STUDY,
        data=data,
    )
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, output(proc)
    assert [t.state for t in load_study(tmp_path).trials] == [TrialState.COMPLETE] * 2
    assert "daemonic" not in output(proc)


def test_trials_whose_config_cannot_be_composed_count_as_failed(tmp_path):
    # Every trial fails, so the sweep itself exits non-zero (whatever failed the trials:
    # a run's own failure, NaN loss, is test_a_failing_trial_does_not_stop_the_sweep's).
    proc = run_cli(sweep(tmp_path, "model=transformer,perceiver", n_trials=2), tmp_path)
    assert proc.returncode != 0
    text = output(proc)
    assert "All 2 trials of this sweep failed" in text
    assert "Could not find 'model/" in text  # Hydra's own message, per trial
    assert [t.state for t in load_study(tmp_path).trials] == [TrialState.FAIL] * 2


def test_multi_objective_constrained_sweep_records_the_feasible_pareto_front(tmp_path):
    # Two objectives through the sweeper's direction alone: every run follows it. The
    # bound on the parameter count lets only the small model through; the latency bound
    # makes each run measure its latency, which it does only when asked.
    small = build_model(run_config([*FAST, "model.hidden_size=8"]).model, (1, 12, 12), 4)
    bound = sum(p.numel() for p in small.parameters())
    proc = run_cli(
        sweep(
            tmp_path,
            "optimized_metric=[val/acc,model/params]",
            "hydra.sweeper.direction=[maximize,minimize]",
            "model.hidden_size=choice(8,64)",
            "hydra/sweeper/sampler=nsgaii",
            "hydra.sweeper.sampler.population_size=4",
            f"hydra.sweeper.constraints=['model/params <= {bound}','model/latency_ms <= 1e6']",
            log_plots=True,
        ),
        tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    study = load_study(tmp_path)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}  # nothing pruned
    (results,) = (tmp_path / "multirun").rglob("optimization_results.yaml")
    front = yaml.safe_load(results.read_text())["solutions"]
    assert sorted(s["trial"] for s in front) == sorted(t.number for t in study.best_trials)
    feasible = {t.number for t in study.trials if t.params["model.hidden_size"] == 8}
    assert front and {s["trial"] for s in front} <= feasible
    for trial in study.trials:
        assert trial.user_attrs["feasible"] == (trial.number in feasible)
        assert trial.user_attrs["measures"]["model/latency_ms"] > 0

    (parent,), children = split_runs(tmp_path)
    for child in children:  # the second objective is the run's own parameter count
        trial = study.trials[int(child.data.tags["optuna.trial"])]
        assert trial.values[1] == child.data.metrics["model/params"]
        assert child.data.params["optimized_direction"] == "['maximize', 'minimize']"
        assert child.data.tags["optuna.feasible"] == str(trial.number in feasible).lower()
    assert parent.data.metrics["pareto_front_size"] == len(front)
    assert parent.data.tags["pareto.trials"] == ",".join(str(s["trial"]) for s in front)
    client = MlflowClient(sqlite_uri(tmp_path))
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "pareto_front.md" in artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/pareto_front.png"}
    assert "trial  state     feasible  rank" in output(proc)  # ordered by Pareto rank
