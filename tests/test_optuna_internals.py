"""Each Optuna internal the sweeper relies on does what the sweeper needs, on a real
study in a real SQLite storage: a new Optuna release that changes one fails here."""

from __future__ import annotations

import time
import warnings

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from experiment.sweep import optuna_internals as internals


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="s")


def test_a_trial_is_found_again_by_its_storage_id_and_number(study):
    trial = study.ask()
    frozen = internals.trial_by_number(study, trial.number)
    assert internals.trial_id(frozen) == internals.trial_id(trial)
    rebuilt = optuna.Trial(study, internals.trial_id(trial))  # as another process does
    assert rebuilt.number == trial.number


def test_attrs_are_written_on_a_running_trial_and_read_back(study):
    trial = study.ask()
    internals.set_system_attr(study, trial, "worker", "host:1")
    internals.set_user_attr(study, trial, "feasible", True)
    frozen = internals.trial_by_number(study, trial.number)
    assert frozen.system_attrs["worker"] == "host:1" and frozen.user_attrs["feasible"] is True


def test_a_running_trial_is_failed_from_outside(study):
    trial = study.ask()
    internals.fail_trial(study, trial)
    assert internals.trial_by_number(study, trial.number).state == TrialState.FAIL


def test_constraint_values_are_where_optunas_samplers_read_them(study):
    trial = study.ask()
    internals.set_system_attr(study, trial, internals.CONSTRAINT_ATTR.format("x <= 1"), 2.0)
    study.tell(trial, 1.0)
    from optuna.samplers._base import _CONSTRAINTS_KEY

    (frozen,) = study.get_trials()
    assert frozen.system_attrs == {_CONSTRAINTS_KEY + ":x <= 1": 2.0}


@pytest.mark.slow  # waits out a grace period
def test_heartbeats_keep_a_trial_alive_and_a_silent_one_is_stale(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=1, grace_period=2
        )
    study = optuna.create_study(storage=storage)
    beating, silent = study.ask(), study.ask()
    with warnings.catch_warnings():  # "supposed to be used with Study.optimize": ask-and-tell
        warnings.simplefilter("ignore", UserWarning)
        beat = internals.heartbeat(study, beating), internals.heartbeat(study, silent)
    with beat[0], beat[1]:
        pass  # one heartbeat each
    with internals.heartbeat(study, beating):
        time.sleep(3)
    assert internals.stale_trial_ids(study) == {internals.trial_id(silent)}


def test_no_heartbeats_means_no_stale_trials(study):
    study.ask()
    with internals.heartbeat(study, study.ask()):
        pass
    assert internals.stale_trial_ids(study) == set()


def test_domination_between_trials(tmp_path):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in ([0.9, 10.0], [0.8, 20.0], [0.95, 30.0]):
        study.add_trial(optuna.trial.create_trial(values=values))
    best, worse, other = study.get_trials()
    assert internals.dominates(best, worse, study.directions)
    assert not internals.dominates(best, other, study.directions)
    assert not internals.dominates(worse, best, study.directions)


def test_a_value_is_checked_against_a_distribution():
    assert internals.contains(FloatDistribution(0.0, 1.0), 0.5)
    assert not internals.contains(FloatDistribution(0.0, 1.0), 1.5)
    assert not internals.contains(IntDistribution(1, 4), "two")


def test_the_storages_private_database_calls_are_there_and_wait_out_an_outage():
    from experiment.sweep.patience import PatientStorage

    for name in internals.PRIVATE_STORAGE_CALLS:
        assert callable(getattr(optuna.storages.RDBStorage, name))
        assert getattr(PatientStorage, name) is not getattr(optuna.storages.RDBStorage, name)


def test_every_database_call_of_a_study_goes_through_the_storages_patience(tmp_path):
    """Ask (with a parameter), report, tell and reading the trials back, through Optuna's
    cache in front of the storage: each reaches the database by a call that waits out an
    outage, private ones included."""
    from experiment.sweep.patience import Patience, PatientStorage

    class Counting(Patience):
        def call(self, function, *args, **kwargs):
            seen.add(function.__name__)
            return super().call(function, *args, **kwargs)

    seen: set[str] = set()
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = PatientStorage(url, patience=Counting(url))
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.report(0.5, 0)
    study.tell(trial, 1.0)
    assert len(study.trials) == 1 and study.best_value == 1.0
    assert {"_create_new_trial", "_set_trial_param", "_get_trials"} <= seen
    assert {"set_trial_intermediate_value", "set_trial_state_values"} <= seen
