"""Trials as submitit jobs (hydra/launcher=submitit_local: real job processes on this
machine, the same flow as SLURM): asynchronous submission of at most n_jobs, pruning from
inside the job, a killed job's trial failed with its job's state and retried, and a killed
coordinator whose rerun re-attaches to the jobs instead of submitting them again."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import (
    all_runs,
    output,
    run_cli,
    sqlite_uri,
    start_cli,
    sweep_args,
    tracking_overrides,
    wait_for_line,
)

pytestmark = pytest.mark.slow
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


def job_sweep(tmp_path: Path, *extra: str, n_trials: int) -> tuple[list[str], str]:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = [*tracking_overrides(tmp_path), "tracking.log_plots=false"]
    args = sweep_args(
        storage,
        tracking,
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
        *extra,
        n_trials=n_trials,
        study="jobs",
    )
    return args, storage


def test_trials_run_as_jobs_pruned_inside_and_a_killed_job_is_retried(tmp_path):
    # A threshold no accuracy reaches: every trial is pruned at its first report, in its job.
    args, storage = job_sweep(
        tmp_path,
        "trainer.epochs=4",
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 2.0}",
        n_trials=4,
    )
    proc = start_cli(args, tmp_path)
    lines = []
    while not (match := SUBMITTED.search(line := proc.stdout.readline())):
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
    assert len(runs) == 4 and len(parents) == 1 and None not in parents
    for run in runs:  # each trial run names its job and the job's logs
        assert run.data.tags["submitit.job_id"].isdigit()
        assert Path(run.data.tags["submitit.stdout"]).is_file()


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
