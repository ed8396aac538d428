"""The sweeper as a drop-in for the official hydra-optuna-sweeper: its documented
scenarios (examples/), its config API, any task function, grid search, warm starts and
lost machines. Real Hydra multiruns in subprocesses, real Optuna storages under tmp_path."""

from __future__ import annotations

import signal
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import ROOT, output, run_cli, start_cli, stop_group, wait_for_line

pytestmark = pytest.mark.slow
SPHERE = [str(ROOT / "examples" / "sphere" / "sphere.py")]
BINH_AND_KORN = [str(ROOT / "examples" / "binh_and_korn" / "binh_and_korn.py")]
CONDITIONAL = [str(ROOT / "examples" / "conditional" / "conditional.py")]
TASKS = [str(ROOT / "tests" / "apps" / "tasks.py")]


def sweep(
    program, tmp_path, *args, study="study", storage="optuna.db", check=True, split=False, env=None
):
    url = f"sqlite:///{tmp_path / storage}"
    proc = run_cli(
        ["-m", f"hydra.sweeper.storage={url}", f"hydra.sweeper.study_name={study}", *args],
        tmp_path,
        env=env,
        program=program,
        timeout=240,
        split_stderr=split,
    )
    if check:
        assert proc.returncode == 0, output(proc)
    return proc, optuna.load_study(study_name=study, storage=url)


def results(tmp_path) -> dict:
    """The results file of the latest sweep under tmp_path."""
    found = sorted((tmp_path / "multirun").rglob("optimization_results.yaml"))
    return yaml.safe_load(max(found, key=lambda p: p.stat().st_mtime).read_text())


def test_sphere_example_with_a_seeded_tpe_sampler(tmp_path):
    _, first = sweep(SPHERE, tmp_path, study="a")
    # The first 12 trials (TPE's random start and its first guided ones) tell the seeds.
    _, again = sweep(SPHERE, tmp_path, "hydra.sweeper.n_trials=12", study="b")
    _, other = sweep(
        SPHERE, tmp_path, "hydra.sweeper.sampler.seed=124", "hydra.sweeper.n_trials=12", study="c"
    )
    assert len(first.trials) == 20 and first.direction.name == "MINIMIZE"
    assert first.best_value <= 1.0  # the minimum, 0, is at x=0, y=0
    assert {t.params["y"] for t in first.trials} <= {-5, 0, 5}
    assert all(t.params["x"] in [-5.5 + 0.5 * i for i in range(22)] for t in first.trials)
    assert [t.params for t in first.trials[:12]] == [t.params for t in again.trials]  # seeded
    assert [t.params for t in first.trials[:12]] != [t.params for t in other.trials]


def test_binh_and_korn_example_gives_the_pareto_front(tmp_path):
    _, study = sweep(BINH_AND_KORN, tmp_path)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    for trial in study.trials:  # the tuple the task returned, unchanged
        x, y = trial.params["x"], trial.params["y"]
        assert trial.values == pytest.approx([4 * x**2 + 4 * y**2, (x - 5) ** 2 + (y - 5) ** 2])
    front = results(tmp_path)["solutions"]
    assert sorted(s["trial"] for s in front) == sorted(t.number for t in study.best_trials)
    values = [t.values for t in study.trials]
    for solution in front:  # no trial is better in both objectives
        a, b = solution["values"]
        assert not any(u <= a and v <= b and (u, v) != (a, b) for u, v in values)


def test_conditional_example_suggests_momentum_only_for_sgd(tmp_path):
    _, study = sweep(CONDITIONAL, tmp_path)
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}  # the app checks too
    kinds = {t.params["optimizer"] for t in study.trials}
    assert kinds == {"adam", "sgd"}
    for trial in study.trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")
    # The suggested value reached the job as an override.
    sgd = next(t for t in study.trials if t.params["optimizer"] == "sgd")
    (overrides,) = (tmp_path / "multirun").rglob(f"{sgd.number}/.hydra/overrides.yaml")
    assert f"momentum={sgd.params['momentum']!r}" in overrides.read_text()


def test_grid_search_visits_each_point_once_even_across_runs(tmp_path):
    grid = ["hydra/sweeper/sampler=grid", "x=choice(-1,0,1)", "y=range(0,2)"]
    proc, study = sweep(SPHERE, tmp_path, *grid, "hydra.sweeper.n_trials=10")
    assert "Grid search: 6 points" in output(proc)
    points = sorted((t.params["x"], t.params["y"]) for t in study.trials)
    assert points == [(x, y) for x in (-1, 0, 1) for y in (0, 1)]
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    again, study = sweep(SPHERE, tmp_path, *grid, "hydra.sweeper.n_trials=10")
    assert "6 of 6 trials already counted" in output(again) and len(study.trials) == 6
    refused, _ = sweep(SPHERE, tmp_path, *grid, "x=interval(-1,1)", study="i", check=False)
    assert refused.returncode == 2 and "x: a grid search needs choice" in output(refused)


def test_any_task_return_value_fails_only_its_own_trial(tmp_path):
    # A callable object as the task, two worker processes, a launcher it does not use.
    args = ["hydra.sweeper.n_trials=12", "hydra.sweeper.n_jobs=2", "hydra/launcher=pretend"]
    proc, study = sweep(TASKS, tmp_path, *args)
    text = output(proc)
    assert "hydra/launcher=pretend is not used" in text
    assert study.direction.name == "MINIMIZE"  # the app states no direction
    assert all(t.state.is_finished() for t in study.trials) and len(study.trials) == 12
    for trial in study.trials:
        assert (trial.state == TrialState.COMPLETE) == (trial.params["mode"] == "number")
    expected = {
        "none": "the task returned None: expected a number",
        "not_a_number": "NaN is no objective value",
        "text": "the task returned 'fast': expected a number",
        "pair": "expected a number",
        "raise": "RuntimeError: the task failed on purpose",
    }
    for trial in study.trials:
        if trial.params["mode"] in expected:
            line = next(line for line in text.splitlines() if f"trial {trial.number} FAIL" in line)
            assert expected[trial.params["mode"]] in line, line


def test_each_worker_warms_up_once_before_its_first_trial(tmp_path):
    # hydra.sweeper.warm_up_function (tests/apps/tasks.yaml: the script's own function)
    # runs in each worker, with the sweep's fixed overrides, before any trial of it.
    log = tmp_path / "warm_up.log"
    args = ["hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2", "~hydra.sweeper.params.mode"]
    _, study = sweep(TASKS, tmp_path, *args, "mode=number", f"warm_up_log={log}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6
    lines = log.read_text().splitlines()
    warm = [line.split()[1] for line in lines if line.startswith("warm-up")]
    assert len(warm) == len(set(warm)) == 2
    assert all(line.endswith("mode=number") for line in lines if line.startswith("warm-up"))
    trials = [(index, line.split()[1]) for index, line in enumerate(lines) if "trial" in line]
    assert len(trials) == 6 and {pid for _, pid in trials} <= set(warm)
    for pid in warm:
        assert lines.index(f"warm-up {pid} mode=number") < min(i for i, p in trials if p == pid)


def test_workers_that_cannot_start_stop_the_sweep_with_a_clear_message(tmp_path):
    args = ["hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "~hydra.sweeper.params.mode"]
    proc, study = sweep(TASKS, tmp_path, *args, "mode=crash_worker", check=False, split=True)
    assert proc.returncode == 2, output(proc)
    assert "worker process ended before its first trial (exit code 3)" in proc.stderr
    assert not [t for t in study.trials if t.state == TrialState.COMPLETE]


def test_max_failure_rate_stops_the_sweep_with_its_records_complete(tmp_path):
    proc, study = sweep(
        TASKS,
        tmp_path,
        "hydra.sweeper.n_trials=12",
        "hydra.sweeper.max_failure_rate=0.3",
        check=False,
        split=True,
    )
    assert proc.returncode == 2, output(proc)
    # The error on stderr, with the last failed trial's own error; progress on stdout.
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("SweepError")]
    assert "more than hydra.sweeper.max_failure_rate=0.3" in line
    last = max((t for t in study.trials if t.state == TrialState.FAIL), key=lambda t: t.number)
    assert f"The last failed trial, {last.number}: {last.system_attrs['error']}" in line
    assert "SweepError" not in proc.stdout and "Trials of study" in proc.stdout
    assert "Traceback" not in output(proc)
    assert all(t.state.is_finished() for t in study.trials) and len(study.trials) < 12
    failed = sum(t.state == TrialState.FAIL for t in study.trials)
    assert failed / len(study.trials) > 0.3
    assert results(tmp_path)["trials"]["FAIL"] == failed
    assert results(tmp_path)["stopped_by"] == "max_failure_rate"


NUMBERS = ["mode=number", "~hydra.sweeper.params.mode", "hydra.sweeper.n_trials=30"]


def test_stop_conditions_end_a_sweep_early_and_a_rerun_resumes_it(tmp_path):
    # target: the first trial at or below 0.2 ends the sweep (it minimizes x).
    proc, study = sweep(
        TASKS,
        tmp_path,
        *NUMBERS,
        "hydra.sweeper.target=0.2",
        study="target",
        split=True,
        env={"PYTHONPROFILEIMPORTTIME": "1"},  # every module the sweep imports, on stderr
    )
    values = [t.value for t in study.trials]
    assert values[-1] <= 0.2 and all(v > 0.2 for v in values[:-1]) and len(values) < 30
    assert results(tmp_path)["stopped_by"] == "target"
    assert f"stopped by target: trial {len(values) - 1} reached" in proc.stdout + proc.stderr
    # A task of one's own that needs neither torch nor MLflow waits for neither.
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "optuna" in imported and not imported & {"torch", "mlflow", "matplotlib"}
    higher = [*NUMBERS[:2], "hydra.sweeper.n_trials=8", "hydra.sweeper.target=1e-5"]
    _, study = sweep(TASKS, tmp_path, *higher, study="target")
    assert len(study.trials) == 8  # a higher bar: the same study goes on

    # patience: 3 finished trials in a row without a new best.
    _, study = sweep(TASKS, tmp_path, *NUMBERS, "hydra.sweeper.patience=3", study="patience")
    values = [t.value for t in study.trials]
    best_at = values.index(min(values))
    assert len(values) == best_at + 4 and results(tmp_path)["stopped_by"] == "patience"
    _, study = sweep(TASKS, tmp_path, *NUMBERS, "hydra.sweeper.patience=5", study="patience")
    assert len(study.trials) > len(values)  # resumed: the same trials, then more

    # timeout: no trial starts after 1 s; each run has its own clock.
    slow = [*NUMBERS, "hydra.sweeper.timeout=1", "seconds=0.6"]
    proc, study = sweep(TASKS, tmp_path, *slow, study="timeout")
    first = len(study.trials)
    assert 1 <= first <= 2 and results(tmp_path)["stopped_by"] == "timeout"
    assert "stopped by timeout" in proc.stdout
    _, study = sweep(TASKS, tmp_path, *slow, study="timeout")
    assert first < len(study.trials) <= 2 * first + 1
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}  # running ones finished


def test_a_constrained_sweep_picks_the_best_feasible_trial(tmp_path):
    # The task records x; the constraint x >= 0.5 rules out the low values it prefers.
    args = [*NUMBERS[:2], "hydra.sweeper.n_trials=12", "hydra.sweeper.sampler=tpe", "record_x=true"]
    _, study = sweep(TASKS, tmp_path, *args, 'hydra.sweeper.constraints=["x >= 0.5"]')
    values = [t.value for t in study.trials]
    best = results(tmp_path)
    assert best["best_value"] == min(v for v in values if v >= 0.5) == study.best_value
    assert min(values) < 0.5  # the unconstrained best breaks the constraint
    assert best["infeasible"] == sum(v < 0.5 for v in values) > 0
    for trial in study.trials:
        assert trial.user_attrs["feasible"] == (trial.value >= 0.5)
        assert trial.constraints == {"x >= 0.5": pytest.approx(0.5 - trial.value)}


def test_warm_start_and_enqueued_trials_seed_a_new_study(tmp_path):
    sweep(SPHERE, tmp_path, "hydra.sweeper.n_trials=5", study="first")
    _, study = sweep(
        SPHERE,
        tmp_path,
        "hydra.sweeper.warm_start=first",
        "hydra.sweeper.enqueue_trials=[{x: 0.5, y: 0}]",
        "hydra.sweeper.n_trials=3",
        study="second",
    )
    copied = [t for t in study.trials if "warm_start_from" in t.user_attrs]
    new = [t for t in study.trials if t not in copied]
    assert len(copied) == 5 and len(new) == 3  # copies do not use up n_trials
    assert new[0].params == {"x": 0.5, "y": 0}  # the enqueued configuration ran first
    assert new[0].value == pytest.approx(0.25)
    refused, _ = sweep(
        SPHERE,
        tmp_path,
        "hydra.sweeper.warm_start=first",
        "x=range(0,3)",
        study="third",
        check=False,
    )
    assert refused.returncode == 2
    assert "parameter 'x'" in output(refused) and "outside" in output(refused)


def test_a_silent_process_trial_is_failed_and_retried_by_another(tmp_path):
    # Process A stops (SIGSTOP: its heartbeats stop, as on a machine that died) mid-trial;
    # process B of the same study fails that trial after the grace period and retries it.
    args = [
        "-m",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.heartbeat_interval=1",
        "hydra.sweeper.grace_period=3",
        "mode=number",
        "seconds=2",
    ]
    first = start_cli(args, tmp_path, program=TASKS)
    wait_for_line(first, "trials already counted")
    time.sleep(1.0)  # trial 0 is running, with a heartbeat recorded
    first.send_signal(signal.SIGSTOP)
    try:
        second = run_cli(args, tmp_path, program=TASKS, timeout=120)
    finally:
        stop_group(first)
    assert second.returncode == 0, output(second)
    study = optuna.load_study(study_name="shared", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    lost = study.trials[0]
    assert lost.state == TrialState.FAIL and lost.system_attrs["fail_reason"] == "heartbeat lost"
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(retries) == 1 and retries[0].params == lost.params
    assert retries[0].state == TrialState.COMPLETE
    counted = [t for t in study.trials if t.number != 0]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
