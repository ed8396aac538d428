"""How a trial runs, wherever it runs: the executor interface, the trial job itself, and
what is handed to another process to run one.

A trial is one Hydra job (Hydra's `run_job`: its own output folder, logging and `.hydra/`
record) executed with a TrialContext set, so the run reports to its trial. The sweep's
trial loop talks to every executor through `Executor`: in this process
(`InProcessExecutor`), long-lived worker processes (workers.py), torchrun groups
(groups.py) or submitit jobs (jobs.py).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import logging
import math
import numbers
import os
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hydra.core.utils import JobStatus, run_job, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from experiment.errors import EnvironmentFailure, ExperimentError
from experiment.sweep import context as sweep_context
from experiment.sweep import optuna_internals as internals
from experiment.sweep import study as studies
from experiment.sweep.repeats import run_units
from experiment.sweep.study import StudyLocation
from experiment.system.console import split_streams
from experiment.system.secrets import redact

log = logging.getLogger(__name__)


class Executor(Protocol):
    """Where trials run. The trial loop submits a trial while `free` > 0, and waits for
    `next_result()` while `busy` > 0; `prepare` runs once, under the study lock, before
    the first trial; `close` ends whatever still runs (the sweep stopped or failed)."""

    @property
    def free(self) -> int: ...

    @property
    def busy(self) -> int: ...

    def prepare(self, study, lock) -> None: ...

    def submit(self, trial, job_config: DictConfig, context) -> None: ...

    def next_result(self) -> TrialResult: ...

    def close(self) -> None: ...


log = logging.getLogger(__name__)


@dataclass
class TrialResult:
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    value: float | list[float] | None = None  # a list for several objectives
    error: str | None = None
    seconds: float = 0.0
    # Why its process ended without a result (a killed worker, a lost heartbeat, a job
    # cancelled): the trial is failed with this reason and its configuration queued once
    # more, to continue from its checkpoint; it does not count against n_trials.
    lost: str | None = None
    # Lost to its environment (a full disk, a store down): the sweep stops after it.
    stops_sweep: bool = False

    def __post_init__(self) -> None:
        self.error = redact(self.error) if self.error else self.error  # no secret in the study
        if self.state == sweep_context.LOST:
            self.state, self.stops_sweep = sweep_context.FAIL, True
            self.lost = f"{studies.ENVIRONMENT_FAILED}: {self.error}"


def objective_values(value, n_objectives: int) -> float | list[float]:
    """What the task returned, as the study's objective value(s): a number for one
    objective, a sequence of `n_objectives` numbers for several. ValueError otherwise."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    several = isinstance(value, Sequence) and not isinstance(value, str)
    values = list(value) if several else [value]
    expected = "a number" if n_objectives == 1 else f"a sequence of {n_objectives} numbers"
    if len(values) != n_objectives:
        raise ValueError(f"the task returned {value!r}: expected {expected}")
    numbers_ = []
    for item in values:
        if hasattr(item, "item") and callable(item.item):  # numpy and torch scalars
            item = item.item()
        if isinstance(item, bool) or not isinstance(item, numbers.Real):
            raise ValueError(f"the task returned {value!r}: expected {expected}")
        if math.isnan(item):
            raise ValueError(f"the task returned {value!r}: NaN is no objective value")
        numbers_.append(float(item))
    return numbers_[0] if n_objectives == 1 else numbers_


def execute(
    hydra_context, task_function, job_config: DictConfig, context, heartbeat: bool = True
) -> tuple[str, float | list[float] | None, str | None]:
    """Run one trial job (with several `context.units`, one job per seed and fold:
    repeats.py), sending heartbeats to a storage that wants them (unless `heartbeat` is
    False: the other ranks of a trial's group); (state, value, error)."""
    study = context.trial.study
    heartbeat = internals.heartbeat(study, context.trial) if heartbeat else contextlib.nullcontext()
    with sweep_context.active(context), heartbeat:
        if context.units is not None and context.units.several:
            return run_units(
                lambda config: _run_job(hydra_context, task_function, config, context),
                job_config,
                context,
                context.units,
            )
        return _run_job(hydra_context, task_function, job_config, context)


def _run_job(hydra_context, task_function, job_config: DictConfig, context):
    """One Hydra job of the trial: (state, value, error)."""
    study = context.trial.study
    try:
        ret = run_job(
            hydra_context=hydra_context,
            task_function=task_function,
            config=job_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM stops the sweep, not just the trial
        raise
    except BaseException as err:  # SystemExit from a task, or a crash in Hydra itself
        return sweep_context.FAIL, None, f"{type(err).__name__}: {err}"
    finally:
        split_streams()  # the job configured logging anew: stderr for warnings again
    if ret.status == JobStatus.COMPLETED:
        try:
            return (
                sweep_context.COMPLETE,
                objective_values(ret.return_value, len(study.directions)),
                None,
            )
        except ValueError as err:
            return sweep_context.FAIL, None, str(err)
    error = ret._return_value  # the exception the task raised
    _release_memory()  # an out-of-memory trial must not starve the next one
    if context.is_pruned(error):
        return sweep_context.PRUNED, None, str(error)
    if isinstance(error, EnvironmentFailure):
        return sweep_context.LOST, None, f"{type(error).__name__}: {error}"
    if not isinstance(error, ExperimentError):  # a bug, not a bad value: keep its traceback
        log.error("Trial %d failed", context.trial.number, exc_info=error)
    return sweep_context.FAIL, None, f"{type(error).__name__}: {error}"


def _release_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")  # a task that never imported torch holds no CUDA memory
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class TrialPayload:
    """Everything another process needs to run a trial (a rank of the trial's torchrun
    group, or its submitit job), made by the sweeper once the trial's config is composed."""

    task: tuple
    job_config: DictConfig
    context: object  # a TrialContext whose trial the other process rebuilds from the storage
    trial_id: int
    location: StudyLocation
    pruner: object
    result_file: str = ""  # where a torchrun group's rank 0 leaves the result


def run_payload(
    payload: TrialPayload, *, heartbeat: bool = True, extra_tags: dict | None = None
) -> TrialResult:
    """Run a handed-over trial in this process: its Hydra job, reporting to the shared
    storage (heartbeats only where `heartbeat`; `extra_tags` on its MLflow run)."""
    import optuna
    from hydra._internal.callbacks import Callbacks

    setup_globals()  # Hydra's resolvers for the job's config
    task_function = resolve_task(*payload.task)
    study = payload.location.load(payload.pruner)
    context = payload.context
    context.trial = optuna.Trial(study, payload.trial_id)
    if extra_tags:
        context.extra_tags = extra_tags
    hydra_context = HydraContext(config_loader=None, callbacks=Callbacks(payload.job_config))
    state, value, error = execute(
        hydra_context, task_function, payload.job_config, context, heartbeat=heartbeat
    )
    return TrialResult(context.trial.number, state, value, error)


class InFlight:
    """`free` and `busy` for an executor that keeps its trials in flight in `running` and
    hands each to another process as a TrialPayload."""

    n_jobs: int
    running: list
    task: tuple
    location: StudyLocation
    pruner: object

    def payload(self, trial, job_config: DictConfig, context, result_file: str = ""):
        context.trial = None  # the other process rebuilds it from the shared storage
        return TrialPayload(
            self.task,
            job_config,
            context,
            internals.trial_id(trial),
            self.location,
            self.pruner,
            result_file,
        )

    @property
    def free(self) -> int:
        return self.n_jobs - len(self.running)

    @property
    def busy(self) -> int:
        return len(self.running)


class InProcessExecutor:
    """n_jobs=1: trials run one after another in the sweep's own process."""

    def __init__(self, hydra_context, task_function):
        self.hydra_context, self.task_function = hydra_context, task_function
        self.done: list[TrialResult] = []

    @property
    def free(self) -> int:
        return 0 if self.done else 1

    @property
    def busy(self) -> int:
        return len(self.done)

    def submit(self, trial, job_config: DictConfig, context) -> None:
        start = time.perf_counter()
        state, value, error = execute(self.hydra_context, self.task_function, job_config, context)
        self.done.append(
            TrialResult(trial.number, state, value, error, time.perf_counter() - start)
        )

    def next_result(self) -> TrialResult:
        return self.done.pop()

    def prepare(self, study, lock) -> None:
        pass

    def close(self) -> None:
        pass


def task_reference(task_function) -> tuple[str, str | bytes]:
    """How another process finds the task: by module and name for a module-level function
    (the one under @hydra.main), pickled for anything else callable (an object, say).

    An app started as `python -m pkg.app` or `python app.py` has its task in `__main__`,
    which in another process is some other program: it is named by its real module
    (`pkg.app`) or by its file.
    """
    name = getattr(task_function, "__qualname__", None)
    if not name or "<locals>" in name:
        return "pickle", pickle.dumps(task_function)
    module = task_function.__module__
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        module = spec.name if spec is not None else "file:" + os.path.abspath(main.__file__)
    return module, name


def resolve_task(module: str, name: str | bytes):
    if module == "pickle":
        return pickle.loads(name)
    if module.startswith("file:"):
        spec = importlib.util.spec_from_file_location("_sweep_task", module[len("file:") :])
        loaded = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(loaded)
        function = getattr(loaded, name)
    else:
        function = getattr(importlib.import_module(module), name)
    return getattr(function, "__wrapped__", function)  # the function under @hydra.main
