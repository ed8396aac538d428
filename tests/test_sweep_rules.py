"""The sweeper's stop conditions, constraints and console streams, on real in-memory Optuna
studies and real loggers (the sweeps themselves: test_sweeper_compat.py)."""

from __future__ import annotations

import logging
import sys

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from experiment.errors import SweepError
from experiment.sweep import constraints as constraining
from experiment.sweep.stopping import StopConditions
from experiment.sweep.study import make_sampler
from experiment.system.console import split_streams

X = {"x": optuna.distributions.FloatDistribution(0, 1)}


def study_with(values, directions=("minimize",), states=None) -> optuna.Study:
    """An in-memory study whose trials ended in this order with these values."""
    study = optuna.create_study(directions=list(directions))
    for index, value in enumerate(values):
        state = (states or {}).get(index, TrialState.COMPLETE)
        several = isinstance(value, list | tuple)
        study.add_trial(
            create_trial(
                params={"x": 0.5},
                distributions=X,
                state=state,
                **(
                    {}
                    if state != TrialState.COMPLETE
                    else {"values": list(value)}
                    if several
                    else {"value": value}
                ),
            )
        )
    return study


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"timeout": 0}, "hydra.sweeper.timeout=0: needs a number of seconds > 0"),
        ({"timeout": "soon"}, "hydra.sweeper.timeout=soon"),
        ({"patience": 0}, "hydra.sweeper.patience=0: needs an integer >= 1"),
        ({"patience": 2.5}, "hydra.sweeper.patience=2.5"),
        ({"target": "high"}, "hydra.sweeper.target=high: needs a number"),
        ({"target": [0.9, 0.1]}, "needs a number, one per objective"),
    ],
)
def test_stop_settings_out_of_range_are_refused_by_name(settings, message):
    values = {"timeout": None, "target": None, "patience": None, **settings}
    with pytest.raises(SweepError, match=message.replace("[", r"\[").replace(".", r"\.")):
        StopConditions.from_settings(**values, n_objectives=1)


def test_target_follows_each_objective_direction():
    stop = StopConditions.from_settings(None, [0.9, 100], None, n_objectives=2)
    study = study_with([(0.95, 200), (0.8, 50)], directions=("maximize", "minimize"))
    assert stop.check(study) is None  # neither trial reaches both
    study.add_trial(create_trial(params={"x": 0.5}, distributions=X, values=[0.91, 99]))
    assert stop.check(study).by == "target" and "trial 2" in stop.check(study).reason


def test_patience_counts_finished_trials_since_the_last_new_best():
    stop = StopConditions.from_settings(None, None, 3, n_objectives=1)
    assert stop.check(study_with([5, 4, 6, 7])) is None
    # A failed and a pruned trial count as trials without a new best, as a worse one does.
    states = {3: TrialState.FAIL, 4: TrialState.PRUNED}
    stopped = stop.check(study_with([5, 4, 6, None, None], states=states))
    assert stopped.by == "patience" and stopped.reason.startswith("3 finished trials")
    assert stop.check(study_with([5, 4, 6, 7, 3])) is None  # a new best resets the count


def test_patience_with_several_objectives_waits_for_a_new_pareto_trial():
    stop = StopConditions.from_settings(None, None, 2, n_objectives=2)
    # (1, 3) then (3, 1) both join the front; (2, 4) and (4, 2) are dominated.
    assert stop.check(study_with([(1, 3), (3, 1), (2, 4)], ("minimize",) * 2)) is None
    assert stop.check(study_with([(1, 3), (3, 1), (2, 4), (4, 2)], ("minimize",) * 2))


def test_timeout_counts_from_the_start_of_this_invocation():
    stop = StopConditions.from_settings(30, None, None, n_objectives=1)
    assert stop.check(study_with([1])) is None
    stop.started -= 31
    assert stop.check(study_with([1])).by == "timeout"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("model/params < 5", "is not a constraint"),
        ("model/params <= many", "is not a constraint"),
        ("<= 5", "is not a constraint"),
        ("test/acc >= 0.9", "bounds a test metric"),
    ],
)
def test_malformed_constraints_are_refused_with_the_form_to_use(spec, message):
    with pytest.raises(SweepError, match=message):
        constraining.parse([spec])


def test_constraint_values_are_how_far_a_measure_is_off():
    judge = constraining.Judge(constraining.parse(["model/params <= 100", "val/acc >= 0.9"]))
    trial = create_trial(value=0.5, user_attrs={"measures": {"model/params": 150, "val/acc": 0.95}})
    assert judge.values(trial) == {
        "model/params <= 100": 50,
        "val/acc >= 0.9": pytest.approx(-0.05),
    }
    assert judge.missing(trial) == []
    assert judge.missing(create_trial(value=0.5)) == ["model/params", "val/acc"]


@pytest.mark.parametrize("name", ["random", "cmaes", "qmc", "grid", "bruteforce"])
def test_samplers_that_ignore_constraints_are_refused(name):
    with pytest.raises(SweepError, match="does not take constraints. Use one that does"):
        make_sampler(name, 0, space=X if name != "grid" else {}, constrained=True)


@pytest.mark.parametrize("name", ["tpe", "nsgaii", "nsgaiii", "gp"])
def test_samplers_that_use_constraints_are_accepted(name):
    assert make_sampler(name, 0, space=X, constrained=True) is not None


def test_console_lines_split_warnings_and_errors_to_stderr(capsys):
    logger = logging.getLogger("experiment-console-test")
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    handler = logging.StreamHandler(sys.stdout)
    logger.addHandler(handler)
    try:
        split_streams(logger)
        split_streams(logger)  # idempotent: one twin
        logger.warning("careful")
        logger.error("broken")
        logger.info("ignored below the level")
        logger.setLevel(logging.INFO)
        logger.info("progress")
        out, err = capsys.readouterr()
        assert out == "progress\n" and err == "careful\nbroken\n"
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)


def test_workers_are_forked_only_from_a_single_threaded_process_without_gpus(monkeypatch):
    import sys
    import threading

    from experiment.sweep.workers import start_method

    if sys.platform != "linux":
        pytest.skip("fork is used on Linux only")
    with monkeypatch.context() as alone:  # as a sweep's process before its watchdog starts
        alone.setattr(threading, "active_count", lambda: 1)  # (earlier tests leave threads)
        assert start_method(gpus=0) == "fork"
        assert start_method(gpus=2) == "forkserver"  # CUDA cannot be used in a forked child
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        assert start_method(gpus=0) == "forkserver"  # a lock another thread holds
    finally:
        stop.set()
        other.join()


def test_a_warm_up_function_that_does_not_import_is_refused_naming_its_key():
    from experiment.sweep.settings import function_path

    assert function_path(None, "warm_up_function") is None
    path = "experiment.training.run.warm_up_sweep_worker"
    assert function_path(path, "warm_up_function") == path
    with pytest.raises(SweepError, match=r"hydra.sweeper.preload_function=nowhere.fn: cannot"):
        function_path("nowhere.fn", "preload_function")
    with pytest.raises(SweepError, match="warm_up_function=experiment.sweep.protocol.PARENT_TAG"):
        function_path("experiment.sweep.protocol.PARENT_TAG", "warm_up_function")


def test_mean_of_seeds_prunes_a_trial_worse_over_the_same_seeds_after_two():
    from experiment.sweep.repeats import MeanOfSeedsPruner

    study = optuna.create_study(direction="maximize", pruner=MeanOfSeedsPruner())
    for seeds in ([0.9, 0.8, 0.85], [0.7, 0.9, 0.8], [0.95, 0.75, 0.9]):
        trial = study.ask()
        for step, value in enumerate(seeds):
            trial.report(value, step)
        study.tell(trial, sum(seeds) / 3)
    worse = study.ask()
    worse.report(0.5, 0)
    assert not worse.should_prune()  # one seed says too little
    worse.report(0.6, 1)
    assert worse.should_prune()  # 0.55 over seeds 0-1, against means of 0.85, 0.8, 0.85
    better = study.ask()
    better.report(0.9, 0)
    better.report(0.85, 1)
    assert not better.should_prune()
