"""Samplers and pruners by name or `_target_` node; seeding; storage folders."""

from __future__ import annotations

import contextlib

import optuna
import pytest
from omegaconf import OmegaConf

from experiment.errors import SweepError
from experiment.sweep.study import make_pruner, make_sampler, make_storage


def first_suggestions(sampler, n=5):
    study = optuna.create_study(sampler=sampler)
    return [study.ask().suggest_float("x", 0, 1) for _ in range(n)]


@pytest.mark.parametrize("name", ["tpe", "random", "qmc"])
def test_named_samplers_are_seeded(name):
    assert first_suggestions(make_sampler(name, 7)) == first_suggestions(make_sampler(name, 7))
    assert first_suggestions(make_sampler(name, 7)) != first_suggestions(make_sampler(name, 8))


@pytest.mark.parametrize(
    "name,cls",
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_named_pruners(name, cls):
    assert isinstance(make_pruner(name), cls)


def test_target_nodes_and_ready_objects_are_accepted():
    node = OmegaConf.create({"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 3})
    assert make_pruner(node)._n_warmup_steps == 3
    ready = optuna.samplers.RandomSampler()
    assert make_sampler(ready, 0) is ready


def test_unknown_names_list_the_choices():
    with pytest.raises(SweepError, match="median, hyperband, successive_halving, none"):
        make_pruner("sometimes")


def test_sqlite_storage_creates_its_folder(tmp_path):
    make_storage(f"sqlite:///{tmp_path / 'deep' / 'er' / 'optuna.db'}")
    assert (tmp_path / "deep" / "er").is_dir()
    assert make_storage(None) is None


@pytest.mark.parametrize(
    "name", ["tpe", "random", "cmaes", "nsgaii", "nsgaiii", "qmc", "gp", "bruteforce"]
)
def test_every_sampler_option_builds_from_its_config_node(name):
    from hydra_plugins.experiment_optuna_sweeper.config import SAMPLER_OPTIONS

    node = OmegaConf.structured(SAMPLER_OPTIONS[name])
    sampler = make_sampler(node, seed=3)
    assert type(sampler).__name__.lower().startswith(name[:4])


def test_a_grid_sampler_takes_its_grid_from_the_search_space_and_never_stops_the_study():
    from experiment.sweep.search_space import build
    from experiment.sweep.study import grid_size

    space = build({"x": "choice(1, 2)", "y": "range(0, 3)"}, [])[0]
    sampler = make_sampler("grid", 0, space=space)
    assert grid_size(sampler) == 6
    study = optuna.create_study(sampler=sampler)
    seen = set()
    for _ in range(6):  # the last tell would call study.stop() in Optuna's GridSampler
        trial = study.ask(fixed_distributions=space)
        seen.add((trial.params["x"], trial.params["y"]))
        study.tell(trial, 1.0)
    assert len(seen) == 6


def test_several_objectives_take_no_pruner():
    assert isinstance(make_pruner(None, 2), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(None, 1), optuna.pruners.MedianPruner)
    with pytest.raises(SweepError, match="cannot prune a study with 2 objectives"):
        make_pruner("median", 2)


def test_warm_start_copies_finished_trials_of_a_compatible_study_only():
    from experiment.sweep.search_space import build
    from experiment.sweep.study import warm_start

    space = build({"x": "interval(0, 1)"}, [])[0]
    source = optuna.create_study(study_name="source")
    for x in (0.2, 0.4):
        trial = source.ask(fixed_distributions=space)
        source.tell(trial, x)
    failed = source.ask(fixed_distributions=space)
    source.tell(failed, state=optuna.trial.TrialState.FAIL)
    target = optuna.create_study()
    assert warm_start(target, source, space) == 2
    assert [t.value for t in target.trials] == [0.2, 0.4]
    assert warm_start(target, source, space) == 0  # seeded once only
    narrow = build({"x": "interval(0, 0.001)"}, [])[0]
    with pytest.raises(SweepError, match="parameter 'x'.*outside"):
        warm_start(optuna.create_study(), source, narrow)
    with pytest.raises(SweepError, match="parameter 'z' of the search space has no value"):
        warm_start(optuna.create_study(), source, {**space, "z": narrow["x"]})


@pytest.mark.parametrize(
    "returned,n,expected",
    [
        (0.5, 1, 0.5),
        (3, 1, 3.0),
        ((1, 2.5), 2, [1.0, 2.5]),
        ([1.0, 2.0], 2, [1.0, 2.0]),
    ],
)
def test_task_return_values_become_objective_values(returned, n, expected):
    from experiment.sweep.executors import objective_values

    assert objective_values(returned, n) == expected


@pytest.mark.parametrize(
    "returned,n,message",
    [
        (None, 1, "returned None: expected a number"),
        ("0.5", 1, "returned '0.5': expected a number"),
        (float("nan"), 1, "NaN"),
        ((1.0, 2.0), 1, "expected a number"),
        (1.0, 2, "expected a sequence of 2 numbers"),
        ((1.0, 2.0, 3.0), 2, "expected a sequence of 2 numbers"),
        (True, 1, "expected a number"),
    ],
)
def test_other_task_return_values_are_refused_by_name(returned, n, message):
    from experiment.sweep.executors import objective_values

    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        objective_values(returned, n)


def test_pareto_ranks_peel_the_front_off_layer_by_layer():
    from experiment.sweep.reporting import pareto_ranks

    study = optuna.create_study(directions=["minimize", "minimize"])
    for values in ([1, 4], [2, 2], [4, 1], [3, 3], [5, 5]):
        study.add_trial(optuna.trial.create_trial(values=values))
    assert pareto_ranks(study) == {0: 1, 1: 1, 2: 1, 3: 2, 4: 3}


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("empty", "is empty (0 bytes)"),
        ("truncated", "database disk image is malformed"),
        ("text", "file is not a database"),
        ("foreign", "is a SQLite database of something else (tables runs; no 'studies')"),
    ],
)
def test_a_study_file_that_is_empty_damaged_or_foreign_is_refused_and_left_as_it_is(
    tmp_path, kind, expected
):
    import sqlite3

    path = tmp_path / "optuna.db"
    if kind == "empty":
        path.touch()
    elif kind == "text":
        path.write_text("name: a results file\n")
    elif kind == "foreign":  # another program's database (MLflow's, say) is not a study
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("create table runs (id text)")
            db.commit()
    else:  # a study file cut in the middle of its tables
        whole = tmp_path / "whole.db"
        study = optuna.create_study(study_name="s", storage=make_storage(f"sqlite:///{whole}"))
        for _ in range(50):
            study.add_trial(optuna.trial.create_trial(value=1.0))
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    before = path.read_bytes()
    with pytest.raises(SweepError) as refused:
        make_storage(f"sqlite:///{path}")
    message = str(refused.value)
    assert f"The study file {path} " in message and expected in message, message
    assert "restore it from a backup, or move it away" in message
    assert path.read_bytes() == before  # never replaced, never written to


@pytest.mark.slow  # three MLflow stores and studies: seconds
def test_a_new_study_of_an_old_name_gets_a_parent_run_of_its_own(tmp_path):
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from experiment.sweep import study as studies
    from experiment.sweep.reporting import STUDY_UID_TAG, ParentRun
    from tests.conftest import sqlite_uri, tracking_overrides

    settings = dict(o.split("=", 1) for o in tracking_overrides(tmp_path))
    tracking = SimpleNamespace(
        uri=settings["tracking.uri"],
        artifact_root=settings["tracking.artifact_root"],
        experiment_name="identity",
        log_plots=False,
    )

    def parent_of(study):
        return ParentRun(tracking, study.study_name, None, *studies.identity(study)).run_id

    first = optuna.create_study(
        study_name="cifar", storage=make_storage(f"sqlite:///{tmp_path / 'a.db'}")
    )
    parent = parent_of(first)
    assert parent_of(first) == parent  # the same study, resumed: the same parent
    # The study file replaced by a new one of the same name: a parent of its own.
    again = optuna.create_study(
        study_name="cifar", storage=make_storage(f"sqlite:///{tmp_path / 'b.db'}")
    )
    assert parent_of(again) != parent
    # A study from before identities (trials, no identity) keeps its untagged parent.
    client = MlflowClient(sqlite_uri(tmp_path))
    client.delete_tag(parent, STUDY_UID_TAG)
    old = optuna.create_study(
        study_name="cifar", storage=make_storage(f"sqlite:///{tmp_path / 'c.db'}")
    )
    old.add_trial(optuna.trial.create_trial(value=1.0))
    assert parent_of(old) == parent
    assert client.get_run(parent).data.tags[STUDY_UID_TAG] == old.user_attrs["identity"]


def test_a_storage_outage_is_waited_out_and_told_once_with_its_end(caplog):
    import logging

    from sqlalchemy.exc import OperationalError

    from experiment.sweep.patience import Patience, StorageOutage

    calls = []

    def flaky(answer):  # what a database restart looks like to a caller: refused, then fine
        calls.append(answer)
        if len(calls) <= 2:
            cause = OperationalError("SELECT 1", {}, Exception("connection refused"))
            raise optuna.exceptions.StorageInternalError("lost") from cause
        return answer

    caplog.set_level(logging.WARNING)
    patience = Patience("postgresql://user:pw-123@db/optuna", seconds=30)
    assert patience.call(flaky, 42) == 42 and len(calls) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "postgresql://user:***@db/optuna does not answer" in lines[0]
    assert "storage_patience" in lines[0] and "pw-123" not in lines[0]
    assert lines[1].startswith("The study storage is back after ")

    with pytest.raises(ValueError):  # a bug is no outage: raised at once
        patience.call(lambda: (_ for _ in ()).throw(ValueError("bad")))

    def down():
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    with pytest.raises(StorageOutage) as stopped:
        Patience("sqlite:///optuna.db", seconds=0.5).call(down)
    assert "has not answered for" in str(stopped.value)
    assert "hydra.sweeper.storage_patience=0.5" in str(stopped.value)
    assert "the same command" in str(stopped.value) and "continues the study" in str(stopped.value)


def test_the_sweeps_mlflow_calls_wait_out_an_outage_of_the_tracking_store(caplog):
    import logging

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import OperationalError

    from experiment.sweep.patience import TRACKING, Patience, PatientClient

    class Store:  # an MLflow store that is locked for two calls
        calls = 0
        run_id = "abc"

        def set_terminated(self, run_id, status):
            self.calls += 1
            if self.calls <= 2:
                cause = OperationalError("UPDATE runs", {}, Exception("database is locked"))
                raise MlflowException("(sqlite3.OperationalError) database is locked") from cause
            return (run_id, status)

    caplog.set_level(logging.WARNING)
    client = PatientClient(Store(), Patience("sqlite:///mlruns/mlflow.db", 30, TRACKING))
    assert client.set_terminated("abc", "FINISHED") == ("abc", "FINISHED")
    assert client.run_id == "abc"  # attributes pass through
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("The MLflow tracking store sqlite:///mlruns/mlflow.db does not")
    assert lines[1].startswith("The MLflow tracking store is back after")


def test_a_trial_no_process_claimed_is_abandoned_only_once_an_outage_would_be_waited_out(
    tmp_path,
):
    """An asked trial without its worker may belong to a process whose ask an outage cut
    (the lock's session ended with it): it is left RUNNING until storage_patience and a
    margin are over. One whose worker of this host is gone is abandoned at once."""
    from experiment.sweep import optuna_internals as internals
    from experiment.sweep import study as studies

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({"x": 0.5})
    unclaimed = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert studies.recover_stale_trials(study, 3, unclaimed_after=60.0) == []
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    host = studies.this_worker().rsplit(":", 1)[0]
    gone = f"{host}:{2**22 + 7}"  # above Linux's largest pid: no such process
    internals.set_system_attr(study, dead, studies.WORKER_ATTR, gone)
    (failed,) = studies.recover_stale_trials(study, 3, unclaimed_after=60.0)
    assert failed.number == dead.number  # its process is gone: at once
    (failed,) = studies.recover_stale_trials(study, 3, unclaimed_after=0.0)
    assert failed.number == unclaimed.number  # unclaimed past the wait
    states = {t.number: t.state for t in study.get_trials()}
    assert states[unclaimed.number] == states[dead.number] == optuna.trial.TrialState.FAIL
