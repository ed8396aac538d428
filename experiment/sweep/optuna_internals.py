"""Every use of Optuna beyond its public API, in one place, each with a test of its own
(tests/test_optuna_internals.py), so that a new Optuna release that changes one fails
there, by name. pyproject.toml bounds Optuna below its next major release.

Why each is used, where no public API does the same:
- a study's storage and ids: an ask-and-tell sweep writes a trial's system attrs (its
  worker, error, job, constraint values) and reads one trial by number, without loading
  the whole study (`Study.trials` copies every trial);
- a trial's storage id: handed to another process, which rebuilds `optuna.Trial` on the
  shared storage (the public Trial is not picklable);
- ending a RUNNING trial as FAIL from outside it: `fail_stale_trials` does this only for
  trials whose heartbeat stopped, not for a trial whose process this host saw die (and it
  takes no reason to record);
- the heartbeat thread: `study.optimize` starts it, an ask-and-tell loop has to itself;
- stale-trial ids: to record *why* a trial failed (heartbeat lost) and queue its retry
  under the sweep's own lock, where `fail_stale_trials` would only fail it;
- domination between trials and a distribution's range check: Optuna keeps both private;
- the database calls of RDBStorage beyond BaseStorage's public ones (those of Optuna's
  cache in front of it, the stale-trial query of heartbeats), which patience.py makes wait
  out a storage outage like the rest.
"""

from __future__ import annotations

import contextlib

import optuna
from optuna.trial import TrialState

# RDBStorage's database calls that are not BaseStorage's public API: those Optuna's own
# cache in front of an RDBStorage makes (optuna/storages/_cached_storage.py: every ask,
# tell and trial list of a study goes through them), and the heartbeats' stale-trial query
# (Optuna's fail_stale_trials and `stale_trial_ids` below).
PRIVATE_STORAGE_CALLS = (
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
    "_get_stale_trial_ids",
)

# The system attr Optuna's samplers read a trial's constraint values from (what
# `Trial.set_constraint` / `constraints_func` store).
CONSTRAINT_ATTR = "constraints:{}"


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def trial_id(trial) -> int:
    """The storage id of an `optuna.Trial` or a `FrozenTrial`."""
    return trial._trial_id


def set_system_attr(study: optuna.Study, trial, key: str, value) -> None:
    """On a trial that has not finished (Optuna refuses changes to finished ones)."""
    storage_of(study).set_trial_system_attr(trial_id(trial), key, value)


def set_user_attr(study: optuna.Study, trial, key: str, value) -> None:
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def trial_by_id(study: optuna.Study, storage_id: int) -> optuna.trial.FrozenTrial:
    return storage_of(study).get_trial(storage_id)


def trial_by_number(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """One trial, read alone."""
    storage = storage_of(study)
    return storage.get_trial(
        storage.get_trial_id_from_study_id_trial_number(study_id(study), number)
    )


def fail_trial(study: optuna.Study, trial) -> None:
    """End a RUNNING trial as FAIL from outside the process that ran it."""
    storage_of(study).set_trial_state_values(trial_id(trial), state=TrialState.FAIL)


def heartbeat(study: optuna.Study, trial):
    """A context that sends the trial's heartbeats while it runs (where the storage wants
    them; otherwise nothing)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    storage = storage_of(study)
    if storage is None:
        return contextlib.nullcontext()
    return get_heartbeat_thread(trial_id(trial), storage)


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """Storage ids of RUNNING trials whose heartbeat stopped; empty without heartbeats."""
    storage = storage_of(study)
    if not optuna.storages._heartbeat.is_heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study_id(study)))


def dominates(a, b, directions) -> bool:
    """Whether trial `a` Pareto-dominates trial `b`."""
    from optuna.study._multi_objective import _dominates

    return _dominates(a, b, directions)


def contains(distribution, value) -> bool:
    """Whether `value` (in its external form) lies in `distribution`."""
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False
