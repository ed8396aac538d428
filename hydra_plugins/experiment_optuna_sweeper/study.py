"""The Optuna study behind a sweep: storage, samplers and pruners by name, resume.

A study outlives its process: re-running the same sweep loads it and runs only the trials
still missing. Trials left RUNNING by a killed sweep are marked FAIL and their
configuration is queued once more.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from experiment.errors import SweepError

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WORKER_ATTR = "worker"  # host:pid of the process running a trial
RETRY_OF_ATTR = "retry_of"  # set on the queued re-run of a trial killed mid-run

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


def make_sampler(value: Any, seed: int | None) -> optuna.samplers.BaseSampler:
    return _from_name_or_node("sampler", value, SAMPLERS, seed=seed)


def make_pruner(value: Any) -> optuna.pruners.BasePruner:
    return _from_name_or_node("pruner", value, PRUNERS)


def make_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """None keeps the study in memory; a sqlite path gets its folder created."""
    if not url:
        return None
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    # A generous SQLite lock timeout: parallel workers write reports at once.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_is_dead(worker: str | None) -> bool:
    """True for a trial started by a process of this host that no longer exists."""
    if not worker or ":" not in worker:
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
    """Mark FAIL the RUNNING trials whose process died; queue each configuration once more."""
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if _process_is_dead(t.system_attrs.get(WORKER_ATTR))
    ]
    for trial in stale:
        study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", "process killed")
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        if RETRY_OF_ATTR not in trial.user_attrs and trial.params:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        log.warning(
            "Trial %d was left RUNNING by a killed process: marked FAIL%s.",
            trial.number,
            "" if RETRY_OF_ATTR in trial.user_attrs else ", its configuration queued once more",
        )
    return stale


def counted_trials(study: optuna.Study) -> int:
    """Trials that use up the budget: finished ones and those running now."""
    return len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


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
