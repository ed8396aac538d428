"""Trials as submitit jobs. With hydra/launcher=submitit_local (real job processes on this
machine, the same flow as SLURM): asynchronous submission of at most n_jobs, pruning from
inside the job, a killed job's trial failed and retried, and a killed coordinator whose
rerun re-attaches to the jobs instead of submitting them again. With submitit_slurm on a
real single-node SLURM (tests/slurm_cluster.py): the trials are jobs the scheduler lists,
a job warned of its preemption is requeued and continues its trial, and an scancel'ed
job's trial fails with the job's state and its retry continues it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.conftest import (
    all_runs,
    files_holding,
    output,
    run_cli,
    running_trial_run,
    sqlite_uri,
    start_cli,
    stop_group,
    sweep_args,
    tracking_overrides,
    wait_for_line,
)

pytestmark = pytest.mark.slow
SECRET = "j0b-S3cret"
SUBMITTED = re.compile(r"Trial (\d+) submitted as local job (\d+)")
ENDED = re.compile(r"trial (\d+) (COMPLETE|PRUNED|FAIL)")


def _child_of(pid: int, timeout: float = 30) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"job {pid} started no task process")


def job_sweep(
    tmp_path: Path, *extra: str, n_trials: int, launcher: str = "submitit_local"
) -> tuple[list[str], str]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = [*tracking_overrides(tmp_path), "tracking.log_plots=false"]
    args = sweep_args(
        storage,
        tracking,
        f"hydra/launcher={launcher}",
        "hydra.sweeper.n_jobs=2",
        *extra,
        n_trials=n_trials,
        study="jobs",
    )
    return args, storage


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_trials_run_as_jobs_pruned_inside_and_a_killed_job_is_retried(tmp_path):
    # A threshold no accuracy reaches: every trial is pruned at its first report, in its job.
    args, storage = job_sweep(
        tmp_path,
        "trainer.epochs=4",
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",
        # A secret each job resolves (its job fails if not) and no file of it holds.
        f"+hydra.job.env_set.WAREHOUSE=postgresql://reader:{SECRET}@db.example/w",
        n_trials=4,
    )
    proc = start_cli(args, tmp_path)
    lines = []
    while not (match := SUBMITTED.search(line := wait_for_line(proc, "", seen=lines))):
        lines.append(line)
    lines.append(line)
    # Its job is starting (imports take seconds): kill the job's task process mid-trial,
    # as scancel would (the job id is its controller's pid).
    os.kill(_child_of(int(match.group(2))), signal.SIGKILL)
    rest, _ = proc.communicate(timeout=240)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text

    study = optuna.load_study(study_name="jobs", storage=storage)
    killed = study.trials[int(match.group(1))]
    assert killed.state == TrialState.FAIL
    assert killed.system_attrs["fail_reason"].startswith("job ended without a result")
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.params == killed.params and retry.state == TrialState.PRUNED
    counted = [t for t in study.trials if t.number != killed.number]
    assert len(counted) == 4 and {t.state for t in counted} == {TrialState.PRUNED}
    assert all(list(t.intermediate_values) == [0] for t in counted)  # pruned in the job

    # At most n_jobs at once, and the next trial is submitted as soon as one ends.
    running, most = set(), 0
    for line in text.splitlines():
        if started := SUBMITTED.search(line):
            running.add(started.group(1))
            most = max(most, len(running))
        elif ended := ENDED.search(line):
            running.discard(ended.group(1))
    assert most == 2

    runs = [r for r in all_runs(sqlite_uri(tmp_path)) if "optuna.trial" in r.data.tags]
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    assert len(parents) == 1 and None not in parents  # nested as in local sweeps
    lost = [r for r in runs if r.data.tags["optuna.trial"] == str(killed.number)]
    assert all(r.info.status == "KILLED" for r in lost)  # if its run had started
    runs = [r for r in runs if r not in lost]
    assert len(runs) == 4
    for run in runs:  # each trial run names its job and the job's logs
        assert run.data.tags["submitit.job_id"].isdigit()
        assert Path(run.data.tags["submitit.stdout"]).is_file()
    # The jobs' pickles, logs and .hydra/ files, the stores: no secret in any of them.
    assert list(tmp_path.rglob("*.pkl")) and not files_holding(tmp_path, SECRET)


def test_a_rerun_re_attaches_to_the_jobs_of_a_killed_coordinator(tmp_path):
    args, storage = job_sweep(tmp_path, n_trials=2)
    proc = start_cli(args, tmp_path)
    jobs = [SUBMITTED.search(wait_for_line(proc, "submitted as local job")) for _ in range(2)]
    os.kill(proc.pid, signal.SIGKILL)  # the coordinator only: its jobs go on
    proc.wait(timeout=30)

    rerun = run_cli(args, tmp_path)
    assert rerun.returncode == 0, output(rerun)
    assert "submitted as local job" not in output(rerun)  # nothing submitted twice
    for job in jobs:
        assert f"re-attached to local job {job.group(2)}" in output(rerun)
    study = optuna.load_study(study_name="jobs", storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    runs = [r for r in all_runs(sqlite_uri(tmp_path)) if "optuna.trial" in r.data.tags]
    assert sorted(r.data.tags["submitit.job_id"] for r in runs) == sorted(j.group(2) for j in jobs)
    assert {r.info.status for r in runs} == {"FINISHED"}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    from tests.slurm_cluster import slurm_cluster

    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as env:
        yield env


SLURM_EPOCHS = 24


def start_requeued_job_now(job_id: str, env: dict, timeout: float = 120) -> None:
    """SLURM holds a requeued job for about two minutes (its begin time) before it may
    start again; here, where nothing else waits, the administrator starts it at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True
        ).stdout
        if "JobState=PENDING" in shown and "Restarts=0" not in shown:
            update = ["scontrol", "update", f"JobId={job_id}", "StartTime=now"]
            subprocess.run(update, env=env, check=True)
            return
        time.sleep(0.5)
    raise AssertionError(f"slurm job {job_id} was not requeued within {timeout}s")


@pytest.mark.timeout(400)  # minutes of work on 2 cores: processes, services, several runs
def test_slurm_jobs_a_preempted_one_is_requeued_and_a_cancelled_one_continued(tmp_path, slurm):
    """Trial A's job gets SLURM's warning before a preemption (scancel --signal=USR2): it
    is requeued and continues trial A. Trial B's job is cancelled (scancel): B fails with
    the job's state and its retry continues it. Both from their last checkpoint, in their
    own MLflow run, each epoch logged once."""
    args, storage = job_sweep(
        tmp_path,
        "hydra.launcher.partition=debug",
        f"trainer.epochs={SLURM_EPOCHS}",
        "regularization.early_stopping.patience=null",
        "hydra.sweeper.pruner=none",
        "dataset.source.num_train=2000",
        n_trials=2,
        launcher="submitit_slurm",
    )
    env = {**os.environ, **slurm}
    client = MlflowClient(sqlite_uri(tmp_path))
    proc = start_cli(args, tmp_path, env=slurm)
    try:
        probe = wait_for_line(proc, "reach the study's storage")  # one small job first
        assert "slurm job" in probe
        preempted = running_trial_run(client, 3)
        listed = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True)
        assert preempted.data.tags["submitit.job_id"] in listed.stdout.decode().split()
        # Both trials found while they train, then both signalled: a cancel sent only after
        # the preemption's requeue could reach a trial that already finished.
        cancelled = running_trial_run(client, 3, skip={preempted.info.run_id})
        job_id = preempted.data.tags["submitit.job_id"]
        subprocess.run(["scancel", "--signal=USR2", job_id], env=env, check=True)
        subprocess.run(["scancel", cancelled.data.tags["submitit.job_id"]], env=env, check=True)
        start_requeued_job_now(job_id, env)
        rest, _ = proc.communicate(timeout=300)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, rest[-4000:]

    study = optuna.load_study(study_name="jobs", storage=storage)
    trials = {t.number: t for t in study.trials}
    a, b = (int(r.data.tags["optuna.trial"]) for r in (preempted, cancelled))
    job_log = Path(preempted.data.tags["submitit.stderr"])
    why = (trials[a].system_attrs, job_log.read_text()[-3000:] if job_log.exists() else "")
    assert trials[a].state == TrialState.COMPLETE, why  # the same trial, continued in its job
    assert trials[a].system_attrs["job"]["job_id"] == preempted.data.tags["submitit.job_id"]
    assert trials[b].state == TrialState.FAIL
    assert "CANCELLED" in trials[b].system_attrs["fail_reason"]
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == b]
    assert retry.params == trials[b].params and retry.state == TrialState.COMPLETE
    counted = [t for t in study.trials if t.number != b]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * 2
    for run, trial in ((preempted, trials[a]), (cancelled, retry)):
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/loss")]
        assert sorted(steps) == list(range(SLURM_EPOCHS))
    logs = "\n".join(p.read_text() for p in (tmp_path / "multirun").rglob("*.log"))
    continued = {
        line.split(" from ")[0] for line in logs.splitlines() if "Continuing trial" in line
    }
    assert {c.rsplit(" ", 1)[1] for c in continued} == {str(a), str(b)}, logs[-3000:]


def test_a_storage_the_jobs_cannot_open_is_named_with_the_reason(tmp_path):
    from experiment.sweep.jobs import (
        storage_problem_seen_from_job as check_storage,
    )

    missing = tmp_path / "elsewhere" / "optuna.db"
    problem = check_storage(f"sqlite:///{missing}", "jobs")
    assert problem is not None and str(missing) in problem and "does not exist" in problem
    assert check_storage(f"postgresql://u:p@127.0.0.1:{_closed_port()}/optuna", "jobs")
    optuna.create_study(study_name="jobs", storage=f"sqlite:///{tmp_path / 'ok.db'}")
    assert check_storage(f"sqlite:///{tmp_path / 'ok.db'}", "jobs") is None


def _closed_port() -> int:
    from tests.services import free_port

    return free_port()  # nothing listens there
