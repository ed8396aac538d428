"""The Optuna study behind a sweep: storage, samplers and pruners by name, resume.

A study outlives its process: re-running the same sweep loads it and runs only the trials
still missing. Trials left RUNNING by a killed sweep are marked FAIL and their
configuration is queued once more; they do not use up `n_trials`, their retry does.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
import socket
import time
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from experiment.errors import SweepError
from experiment.sqlite_files import create_atomically

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WORKER_ATTR = "worker"  # host:pid of the process running a trial
RETRY_OF_ATTR = "retry_of"  # set on the queued re-run of a trial killed mid-run
FAIL_REASON_ATTR, KILLED = "fail_reason", "process killed"
COORDINATORS_ATTR = "coordinators"  # how many sweep processes have joined the study

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
}
PRUNERS = {
    # Pruning starts after 3 complete trials (Optuna's default waits for 5): in a 20-trial
    # sweep those 2 extra unpruned trials cost about a fifth of all epochs.
    "median": functools.partial(optuna.pruners.MedianPruner, n_startup_trials=3),
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}


def _from_name_or_node(kind: str, value: Any, table: dict, **defaults):
    """A sampler/pruner given as a name from `table` or as a `_target_` node.

    Hydra instantiates `_target_` nodes of the sweeper's config before the sweeper sees
    them, so a node usually arrives here as the object already.
    """
    if isinstance(value, optuna.samplers.BaseSampler | optuna.pruners.BasePruner):
        return value
    if isinstance(value, DictConfig | dict):
        node = (
            OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
        )
        if "_target_" in node:
            return instantiate(node)
        name, kwargs = node.pop("name", None), node
    else:
        name, kwargs = value, {}
    if name not in table:
        raise SweepError(
            f"Unknown hydra.sweeper.{kind} {name!r}. Allowed: {', '.join(table)}, "
            "or a node with _target_."
        )
    parameters = inspect.signature(table[name]).parameters  # e.g. seed, where it is taken
    accepted = {k: v for k, v in defaults.items() if k in parameters}
    return table[name](**{**accepted, **kwargs})


def make_sampler(value: Any, seed: int | None, join_index: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of the `join_index`-th process to join the study (0 for the first).

    Each process gets its own seed (seed + join_index): processes that share a study, or a
    rerun that resumes one, would otherwise draw the same random start-up trials again.
    """
    seed = None if seed is None else seed + join_index
    sampler = _from_name_or_node("sampler", value, SAMPLERS, seed=seed)
    if join_index and isinstance(value, optuna.samplers.BaseSampler):
        sampler.reseed_rng()  # built by the user with its own seed: no offset to add
    return sampler


def join(study: optuna.Study) -> int:
    """Count this process in the study's coordinators; return how many joined before it.
    Call it under the study lock."""
    index = int(study.user_attrs.get(COORDINATORS_ATTR, 0))
    study.set_user_attr(COORDINATORS_ATTR, index + 1)
    return index


def make_pruner(value: Any) -> optuna.pruners.BasePruner:
    return _from_name_or_node("pruner", value, PRUNERS)


def make_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """None keeps the study in memory; a sqlite path gets its folder created."""
    if not url:
        return None
    # A generous SQLite lock timeout: parallel workers write reports at once.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}

    def create_tables(temporary_url: str) -> None:
        storage = optuna.storages.RDBStorage(temporary_url, engine_kwargs=engine_kwargs)
        storage.engine.dispose()

    try:
        create_atomically(url, create_tables)
        return _open_rdb_storage(url, engine_kwargs)
    except ImportError as err:
        driver = getattr(err.__cause__, "name", None) or "the database driver"
        raise SweepError(
            f"hydra.sweeper.storage={redact_storage(url)} needs {driver}, which is not "
            "installed. For PostgreSQL: pip install -e '.[postgres]'."
        ) from None
    except Exception as err:  # unreachable server, wrong password, malformed URL
        raise SweepError(
            f"Cannot open the Optuna storage {redact_storage(url)}: {type(err).__name__}: "
            f"{redact_storage(str(err)).splitlines()[0]}. Check hydra.sweeper.storage "
            "(is the database server running and the URL right?)."
        ) from None


def _open_rdb_storage(url: str, engine_kwargs: dict, attempts: int = 4):
    """Sweep processes started together on a new database all create Optuna's tables at
    once; all but one fail on PostgreSQL's catalog. A retry finds the tables there."""
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except ImportError:
            raise
        except Exception as err:
            from sqlalchemy.exc import IntegrityError, ProgrammingError

            if attempt == attempts - 1 or not isinstance(err, IntegrityError | ProgrammingError):
                raise
            time.sleep(0.5 + random.random())


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_is_dead(worker: str | None) -> bool:
    """True for a trial started by a process of this host that no longer exists.

    A trial gets its worker under the study lock right after it is asked for; seen under
    that lock, a RUNNING trial with no worker belongs to a process killed in between.
    """
    if not worker:
        return True
    if ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return False  # another machine's worker: its own sweep resolves it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def recover_stale_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Mark FAIL the RUNNING trials whose process died; queue each configuration once more.
    Call it under the study lock."""
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if _process_is_dead(t.system_attrs.get(WORKER_ATTR))
    ]
    for trial in stale:
        study._storage.set_trial_system_attr(trial._trial_id, FAIL_REASON_ATTR, KILLED)
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        if RETRY_OF_ATTR not in trial.user_attrs and trial.params:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        log.warning(
            "Trial %d was left RUNNING by a killed process: marked FAIL%s.",
            trial.number,
            "" if RETRY_OF_ATTR in trial.user_attrs else ", its configuration queued once more",
        )
    return stale


def was_killed(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.system_attrs.get(FAIL_REASON_ATTR) == KILLED


def counted_trials(study: optuna.Study) -> int:
    """Trials that use up the budget: finished ones and those running now, except trials
    whose process was killed (their retry takes their place)."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(not was_killed(t) for t in trials)


def load_or_create(name: str, storage, direction: str, sampler, pruner) -> optuna.Study:
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise SweepError(
            f"Study '{name}' exists with direction {study.direction.name.lower()}, not "
            f"{direction}. Use another hydra.sweeper.study_name."
        )
    return study


def redact_storage(url: str | None) -> str:
    from experiment.tracking import redact

    return redact(url) if url else "in memory"
