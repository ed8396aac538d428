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
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from experiment.errors import SweepError
from experiment.sweep import optuna_internals as internals
from experiment.sweep.patience import DEFAULT_PATIENCE_S, Patience, PatientStorage
from experiment.sweep.protocol import (
    CHECKPOINT_DIR_ATTR,
    CONTINUES_ATTR,
    RUN_ID_ATTR,
    UNIT_VALUES_ATTRS,
    LostAttempt,
)
from experiment.system.secrets import redact
from experiment.system.sqlite_files import create_atomically, existing_file_problem, sqlite_path

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
WORKER_ATTR = "worker"  # host:pid of the process running a trial
# Beyond a sweep's storage_patience, how long a trial may stay unclaimed (no worker) before
# it counts as abandoned: the rest of an ask after the storage is back.
UNCLAIMED_MARGIN_S = 30.0
RETRY_OF_ATTR = "retry_of"  # set on the queued re-run of a trial killed mid-run
FAIL_REASON_ATTR, KILLED = "fail_reason", "process killed"
ERROR_ATTR = "error"  # what a failed trial's task raised or returned
COORDINATORS_ATTR = "coordinators"  # how many sweep processes have joined the study
IDENTITY_ATTR = "identity"  # a new study of an old name is another study

WARM_START_ATTR = "warm_start_from"  # on trials copied from another study
HEARTBEAT_LOST = "heartbeat lost"  # the fail reason of a trial whose process went silent
JOB_ATTR = "job"  # {job_id, folder, cluster} of a trial run as a submitit job
JOB_LOST = "job ended without a result"  # cancelled, preempted, timed out, node lost
# A disk full, a store down (experiment.errors.EnvironmentFailure): not the trial's fault.
ENVIRONMENT_FAILED = "its environment failed"
GRID_SAMPLER = "optuna.samplers.GridSampler"
DEFAULT_MAX_RETRIES = 3
ATTEMPT_ATTR = "attempt"  # on a retry: 1 for the first of a configuration, then 2, ...


class ExhaustibleGridSampler(optuna.samplers.GridSampler):
    """GridSampler without the `study.stop()` it calls once every point was visited: stop
    works only inside `Study.optimize`, and a sweep stops by capping n_trials at the grid
    size instead. Visited points come from the study, so a resumed or shared study goes
    on where it was and repeats none."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


PRUNERS = {
    # Pruning starts after 3 complete trials (Optuna's default waits for 5): in a 20-trial
    # sweep those 2 extra unpruned trials cost about a fifth of all epochs.
    "median": functools.partial(optuna.pruners.MedianPruner, n_startup_trials=3),
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}


def _pruner_from(value: Any) -> optuna.pruners.BasePruner:
    """A pruner given as a name from PRUNERS or as a `_target_` node."""
    if isinstance(value, optuna.pruners.BasePruner):
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
    if name not in PRUNERS:
        raise SweepError(
            f"Unknown hydra.sweeper.pruner {name!r}. Allowed: {', '.join(PRUNERS)}, "
            "or a node with _target_."
        )
    return PRUNERS[name](**kwargs)


def make_sampler(
    value: Any,
    seed: int | None,
    join_index: int = 0,
    space: dict | None = None,
    constrained: bool = False,
) -> optuna.samplers.BaseSampler:
    """The sampler of the `join_index`-th process to join the study (0 for the first), from
    a short name, a `hydra/sweeper/sampler` node or any `_target_` node.

    Each process gets its own seed (the node's seed, else `seed`, plus join_index):
    processes that share a study, or a rerun that resumes one, would otherwise draw the same
    random start-up trials again. A grid sampler's grid comes from the search space.
    `constrained`: the sweep has constraints, which only samplers that use them may serve
    (see constraints.py).
    """
    from experiment.sweep.constraints import check_sampler
    from experiment.sweep.search_space import grid
    from hydra_plugins.experiment_optuna_sweeper.config import SAMPLER_OPTIONS

    if isinstance(value, optuna.samplers.BaseSampler):
        if constrained:
            check_sampler(type(value), type(value).__name__)
        return value
    if isinstance(value, DictConfig | dict) and "_target_" in value:
        node = OmegaConf.to_container(OmegaConf.create(value), resolve=True)
    elif isinstance(value, str | None) and (value or "tpe") in SAMPLER_OPTIONS:
        node = {"_target_": SAMPLER_OPTIONS[value or "tpe"]._target_}
    else:
        raise SweepError(
            f"Unknown hydra.sweeper.sampler {value!r}. Allowed: {', '.join(SAMPLER_OPTIONS)}, "
            "or a node with _target_."
        )
    base_seed = node.get("seed") if node.get("seed") is not None else seed
    if constrained:
        check_sampler(get_class(node["_target_"]), node["_target_"].rsplit(".", 1)[-1])
    if node["_target_"] == GRID_SAMPLER:
        node["_target_"] = f"{__name__}.ExhaustibleGridSampler"
        node["search_space"] = node.get("search_space") or grid(space or {})
    factory = instantiate(node, _partial_=True)
    if "seed" in inspect.signature(factory.func).parameters:
        factory.keywords["seed"] = None if base_seed is None else base_seed + join_index
    return factory()


def grid_size(sampler: optuna.samplers.BaseSampler) -> int | None:
    """How many points a grid sampler has; None for other samplers."""
    if not isinstance(sampler, optuna.samplers.GridSampler):
        return None
    return int(sampler._n_min_trials)


def join(study: optuna.Study) -> int:
    """Count this process in the study's coordinators; return how many joined before it.
    Call it under the study lock."""
    index = int(study.user_attrs.get(COORDINATORS_ATTR, 0))
    study.set_user_attr(COORDINATORS_ATTR, index + 1)
    return index


def make_pruner(value: Any, n_objectives: int = 1) -> optuna.pruners.BasePruner:
    """The configured pruner; null: median for one objective, none for several (Optuna
    prunes single-objective trials only, so a pruner set for several is an error)."""
    if value is None:
        return PRUNERS["median" if n_objectives == 1 else "none"]()
    pruner = _pruner_from(value)
    if n_objectives > 1 and not isinstance(pruner, optuna.pruners.NopPruner):
        raise SweepError(
            f"hydra.sweeper.pruner={value}: Optuna cannot prune a study with "
            f"{n_objectives} objectives. Leave the pruner unset (or none)."
        )
    return pruner


@dataclass(frozen=True)
class StudyLocation:
    """Where a study lives: its storage (None: in memory, this process alone), its name
    and the heartbeat settings every process that opens it uses."""

    storage_url: str | None
    name: str
    heartbeat_interval: int | None = None
    grace_period: int | None = None
    patience: float = DEFAULT_PATIENCE_S  # seconds of a storage outage waited out

    def open_storage(self) -> optuna.storages.BaseStorage | None:
        return make_storage(
            self.storage_url, self.heartbeat_interval, self.grace_period, self.patience
        )

    def load(self, pruner) -> optuna.Study:
        """The study, opened from another process (a worker, a rank, a job); its sampler
        is never used there: the sweep process asks for every trial."""
        return optuna.load_study(
            study_name=self.name,
            storage=self.open_storage(),
            pruner=pruner,
            sampler=optuna.samplers.RandomSampler(),
        )

    def __str__(self) -> str:
        return f"'{self.name}' in {redact_storage(self.storage_url)}"


def make_storage(
    url: str | None,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    patience: float = DEFAULT_PATIENCE_S,
) -> optuna.storages.BaseStorage | None:
    """None keeps the study in memory; a sqlite path gets its folder created. With a
    heartbeat interval, the processes running trials record heartbeats in the storage.
    Every call waits out an outage of up to `patience` seconds (patience.py)."""
    if not url:
        return None
    # A generous SQLite lock timeout: parallel workers write reports at once. A server's
    # pooled connections are tested before use: after a restart they are all dead.
    sqlite = url.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}

    def create_tables(temporary_url: str) -> None:
        storage = optuna.storages.RDBStorage(temporary_url, engine_kwargs=engine_kwargs)
        storage.engine.dispose()

    problem = existing_file_problem(url, "studies")
    if problem is not None:
        raise SweepError(
            f"The study file {sqlite_path(url)} {problem}. It is left as it is: restore it "
            "from a backup, or move it away to start a new study there "
            "(hydra.sweeper.storage names it)."
        )
    try:
        create_atomically(url, create_tables)
        return _open_rdb_storage(url, engine_kwargs, heartbeat, patience)
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


def _open_rdb_storage(
    url: str, engine_kwargs: dict, heartbeat: dict, patience: float, attempts: int = 4
):
    """Sweep processes started together on a new database all create Optuna's tables at
    once; all but one fail on PostgreSQL's catalog. A retry finds the tables there."""
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return PatientStorage(
                    url, patience=Patience(url, patience), engine_kwargs=engine_kwargs, **heartbeat
                )
        except ImportError:
            raise
        except Exception as err:
            from sqlalchemy.exc import IntegrityError, ProgrammingError

            if attempt == attempts - 1 or not isinstance(err, IntegrityError | ProgrammingError):
                raise
            time.sleep(0.5 + random.random())


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _abandoned(trial: optuna.trial.FrozenTrial, unclaimed_after: float) -> bool:
    """Whether a RUNNING trial has no process left to finish it: its worker (a process of
    this host) no longer exists, or it has no worker `unclaimed_after` seconds after it
    started.

    A trial gets its worker right after it is asked for, under the study lock; one with no
    worker belongs to a process killed in between, or to one still asking for it: a
    database outage in the middle of an ask ends the session that held the (PostgreSQL
    advisory) lock, and the asking process waits the outage out (storage_patience) before
    it claims the trial. So an unclaimed trial is abandoned only once that wait is over."""
    worker = trial.system_attrs.get(WORKER_ATTR)
    if worker:
        return _process_is_dead(worker)
    started = trial.datetime_start
    return started is None or (datetime.now() - started).total_seconds() > unclaimed_after


def _process_is_dead(worker: str) -> bool:
    """True for a trial started by a process of this host that no longer exists."""
    if ":" not in worker:
        return False
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return False  # another machine's worker: its own sweep resolves it
    return pid.isdigit() and not pid_exists(int(pid))


def pid_exists(pid: int) -> bool:
    """Whether process `pid` of this host still runs (an unreaped zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here: kill(0) is all there is to ask
    return state != "Z"


def recover_stale_trials(
    study: optuna.Study,
    max_retries: int = DEFAULT_MAX_RETRIES,
    unclaimed_after: float = DEFAULT_PATIENCE_S + UNCLAIMED_MARGIN_S,
) -> list[optuna.trial.FrozenTrial]:
    """Mark FAIL the RUNNING trials whose process died (on this host) or went silent (any
    host, with heartbeats), and those no process claimed within `unclaimed_after` seconds
    of their start (see `_abandoned`); queue each configuration once more (see
    fail_and_retry). Call it under the lock."""
    # RUNNING trials whose process sent no heartbeat within the grace period: a machine
    # that died, or a process stopped, wherever it ran.
    silent = internals.stale_trial_ids(study)
    # A job's trial is watched through its job instead: it outlives the sweep process that
    # submitted it, and a requeued job sends no heartbeats while it waits in the queue.
    stale = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if JOB_ATTR not in t.system_attrs
        and (internals.trial_id(t) in silent or _abandoned(t, unclaimed_after))
    ]
    for trial in stale:
        reason = HEARTBEAT_LOST if internals.trial_id(trial) in silent else KILLED
        retried = fail_and_retry(study, trial, reason, max_retries)
        log.warning(
            "Trial %d was left RUNNING by a %s: marked FAIL%s.",
            trial.number,
            "process that stopped sending heartbeats"
            if reason == HEARTBEAT_LOST
            else "killed process",
            ", its configuration queued to continue" if retried else " (no retries left)",
        )
    return stale


def fail_and_retry(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial,
    reason: str,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> bool:
    """Mark a trial that never finished FAIL for `reason`; queue its configuration once
    more, to continue where it was lost (`CONTINUES_ATTR`), unless the configuration was
    retried `max_retries` times already. Whether it was queued."""
    internals.set_system_attr(study, trial, FAIL_REASON_ATTR, reason)
    internals.fail_trial(study, trial)
    attempt = int(trial.user_attrs.get(ATTEMPT_ATTR, 1 if RETRY_OF_ATTR in trial.user_attrs else 0))
    if not trial.params or attempt >= max_retries:
        return False
    retry = {
        RETRY_OF_ATTR: trial.number,
        ATTEMPT_ATTR: attempt + 1,
        CONTINUES_ATTR: continuation_of(trial).as_attr(),
        # The seeds and folds it finished (repeats.py): the retry trains the others.
        **{k: v for k, v in trial.user_attrs.items() if k in UNIT_VALUES_ATTRS},
    }
    study.enqueue_trial(trial.params, user_attrs=retry)
    return True


def continuation_of(trial: optuna.trial.FrozenTrial) -> LostAttempt:
    """What continues `trial` (its retry, or its requeued job): its MLflow run and
    checkpoint folder, or, where it was lost before its run recorded them, those of the
    attempt it continued."""
    before = LostAttempt.of_attr(trial.user_attrs.get(CONTINUES_ATTR)) or LostAttempt(-1)
    return LostAttempt(
        trial.number,
        trial.user_attrs.get(RUN_ID_ATTR) or before.mlflow_run_id,
        trial.user_attrs.get(CHECKPOINT_DIR_ATTR) or before.checkpoint_dir,
    )


def was_killed(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial was lost (its process killed or silent, its job ended without a
    result, its disk or store failed) rather than failed by its own task."""
    reason = str(trial.system_attrs.get(FAIL_REASON_ATTR, ""))
    return reason.startswith((KILLED, HEARTBEAT_LOST, JOB_LOST, ENVIRONMENT_FAILED))


def is_counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses up the budget: not one whose process was killed (its retry
    takes its place), nor one copied from another study by a warm start."""
    return not was_killed(trial) and WARM_START_ATTR not in trial.user_attrs


def counted_trials(study: optuna.Study) -> int:
    """Trials that use up the budget: finished ones and those running now (see is_counted)."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(is_counted(t) for t in trials)


def identity(study: optuna.Study) -> tuple[str, bool]:
    """The study's own identity (a random id kept in its user attributes, given when it is
    first opened; call under the study lock), and whether it was given one just now though
    it already held trials (a study from before identities: its parent run has none)."""
    uid = study.user_attrs.get(IDENTITY_ATTR)
    if uid:
        return str(uid), False
    uid = uuid.uuid4().hex
    study.set_user_attr(IDENTITY_ATTR, uid)
    return uid, bool(study.get_trials(deepcopy=False))


def load_or_create(name: str, storage, directions: list[str], pruner) -> optuna.Study:
    study = optuna.create_study(
        study_name=name, storage=storage, directions=directions, pruner=pruner, load_if_exists=True
    )
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise SweepError(
            f"Study '{name}' exists with direction {existing}, not {directions}. "
            "Use another hydra.sweeper.study_name."
        )
    return study


def enqueue(study: optuna.Study, trials: list[dict], space: dict) -> None:
    """Queue parameter sets to be evaluated first; one already in the study is skipped."""
    for params in trials:
        for key, value in params.items():
            _check_value("hydra.sweeper.enqueue_trials", key, value, space)
        study.enqueue_trial(dict(params), skip_if_exists=True)


def warm_start(study: optuna.Study, source: optuna.Study, space: dict) -> int:
    """Copy the finished trials of `source` into a new `study` (one without trials); return
    how many. The two must search the same keys, each source value inside the new range."""
    if study.get_trials(deepcopy=False):
        return 0  # seeded already, or a study with its own history
    if len(source.directions) != len(study.directions):
        raise SweepError(
            f"hydra.sweeper.warm_start: study '{source.study_name}' has "
            f"{len(source.directions)} objectives, this sweep {len(study.directions)}."
        )
    finished = source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in finished:
        for key in sorted(set(space) | set(trial.params)):
            _check_value(
                f"hydra.sweeper.warm_start ({source.study_name})",
                key,
                trial.params.get(key, _ABSENT),
                space,
            )
        study.add_trial(
            optuna.trial.create_trial(
                params={k: trial.params[k] for k in space},
                distributions=space,
                values=trial.values,
                user_attrs={WARM_START_ATTR: f"{source.study_name}#{trial.number}"},
            )
        )
    return len(finished)


_ABSENT = object()


def _check_value(where: str, key: str, value: Any, space: dict) -> None:
    if key not in space:
        raise SweepError(f"{where}: parameter '{key}' is not in this sweep's search space")
    if value is _ABSENT:
        raise SweepError(f"{where}: parameter '{key}' of the search space has no value there")
    distribution = space[key]
    if not internals.contains(distribution, value):
        raise SweepError(
            f"{where}: parameter '{key}' = {value!r} is outside this sweep's {distribution}"
        )


def seed_study(
    study: optuna.Study, own_url: str | None, warm_start_spec, queued: list[dict], space: dict
) -> None:
    """Warm start from another study (`hydra.sweeper.warm_start`: its name, or
    {study_name, storage}), then the queued parameter sets; under the study lock. Only a
    new study is warm-started: a rerun does not read the other study again."""
    if warm_start_spec and not study.get_trials(deepcopy=False):
        spec = warm_start_spec
        source_name = spec if isinstance(spec, str) else spec.get("study_name")
        source_url = (None if isinstance(spec, str) else spec.get("storage")) or own_url
        if not source_url:
            raise SweepError(
                "hydra.sweeper.warm_start reads another study from a database storage: "
                "set hydra.sweeper.storage (or warm_start.storage)"
            )
        try:
            source = optuna.load_study(
                study_name=source_name,
                storage=internals.storage_of(study)
                if source_url == own_url
                else make_storage(source_url),
            )
        except KeyError:
            raise SweepError(
                f"hydra.sweeper.warm_start: no study '{source_name}' in "
                f"{redact_storage(source_url)}"
            ) from None
        copied = warm_start(study, source, space)
        if copied:
            log.info("Warm start: %d finished trials of '%s' seed this study.", copied, source_name)
    enqueue(study, queued, space)


def trial_budget(study: optuna.Study, n_trials: int) -> int:
    """n_trials, or a grid's size where that is smaller."""
    size = grid_size(study.sampler)
    if size is not None and size < n_trials:
        log.info("Grid search: %d points, so at most %d trials.", size, size)
        return size
    return n_trials


def redact_storage(url: str | None) -> str:
    return redact(url) if url else "in memory"
