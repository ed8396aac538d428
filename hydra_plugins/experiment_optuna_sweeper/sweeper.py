"""A Hydra sweeper on Optuna: ask a trial, run it as a Hydra job, tell the result.

A superset of the official `hydra-optuna-sweeper` (which pins optuna<3): the same config
API (`params`, the `hydra/sweeper/sampler` group, `direction` as a string or a list,
`max_failure_rate`, `custom_search_space`) plus pruning (the job reports every epoch to its
trial), resume (`n_trials` counts the study's finished trials across runs), failure
isolation (a failing trial is FAIL, the sweep goes on), non-blocking parallel workers,
grid search to the last point, warm starts, heartbeats for lost machines and MLflow
parent/child runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from hydra.core.utils import configure_log, setup_globals
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf, open_dict

from experiment.console import split_streams
from experiment.errors import ExperimentError, SweepError
from experiment.signals import stop_on_sigterm
from experiment.sweep_context import COMPLETE, FAIL, MEASURES_ATTR, PRUNED, TrialContext
from hydra_plugins.experiment_optuna_sweeper import constraints as constraining
from hydra_plugins.experiment_optuna_sweeper import reporting, search_space
from hydra_plugins.experiment_optuna_sweeper import study as studies
from hydra_plugins.experiment_optuna_sweeper.groups import GroupExecutor
from hydra_plugins.experiment_optuna_sweeper.jobs import LAUNCHERS, JobExecutor
from hydra_plugins.experiment_optuna_sweeper.locking import StudyLock
from hydra_plugins.experiment_optuna_sweeper.stopping import Stop, StopConditions
from hydra_plugins.experiment_optuna_sweeper.workers import (
    InProcessExecutor,
    TrialResult,
    WorkerPool,
)

log = logging.getLogger(__name__)
DIRECTIONS = ("maximize", "minimize")


class ExperimentOptunaSweeper(Sweeper):
    def __init__(
        self,
        direction: Any,
        n_trials: int,
        n_jobs: int,
        study_name: str | None,
        storage: str | None,
        sampler: Any,
        seed: int | None,
        pruner: Any,
        params: dict | None,
        max_failure_rate: float = 1.0,
        custom_search_space: str | None = None,
        enqueue_trials: list | None = None,
        warm_start: Any = None,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        devices_per_trial: int = 1,
        timeout: float | None = None,
        target: Any = None,
        patience: int | None = None,
        constraints: list | None = None,
    ):
        self.direction, self.n_trials, self.n_jobs = _plain(direction), n_trials, n_jobs
        self.devices_per_trial = devices_per_trial
        self.study_name, self.storage_url = study_name, storage
        self.sampler_spec, self.seed, self.pruner_spec = sampler, seed, _plain(pruner)
        self.params = _plain(params) or {}
        self.max_failure_rate, self.custom_search_space = max_failure_rate, custom_search_space
        self.enqueue_trials, self.warm_start = _plain(enqueue_trials) or [], _plain(warm_start)
        self.heartbeat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}
        self.stop_settings = (timeout, _plain(target), patience)
        self.constraint_specs = _plain(constraints) or []

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    # ------------------------------------------------------------------ the sweep

    def sweep(self, arguments: list[str]) -> None:
        """Run the sweep; None, as the official plugin's (the results are in the study,
        the results file and MLflow)."""
        try:
            self._sweep(arguments)
        except ExperimentError as err:  # one clear line on stderr, as for a single run
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.debug("sweep stopped", exc_info=err)  # the log file keeps the details
            print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
            raise SystemExit(err.exit_code) from None

    def _sweep(self, arguments: list[str]) -> None:
        stop_on_sigterm()
        setup_globals()
        self._set_up_logging()
        directions = self._directions()
        self._check_settings()
        stop = StopConditions.from_settings(*self.stop_settings, n_objectives=len(directions))
        self._warn_about_launcher()
        space, fixed = search_space.build(self.params, arguments)
        extend_space = self._custom_search_space()
        name = self.study_name or default_study_name(space, fixed)
        fixed = [*fixed, *self._direction_overrides(directions)]
        judge, pruner = self._judge_and_pruner(space, len(directions))
        storage = studies.make_storage(self.storage_url, **self.heartbeat)
        # Every sweep process joining the study takes this lock for the steps that must not
        # interleave with another's: joining, recovery, the parent run, counting + asking.
        lock = StudyLock(self.storage_url, name, getattr(storage, "engine", None))
        with lock:
            study = studies.load_or_create(name, storage, directions, pruner)
            study.sampler = studies.make_sampler(
                self.sampler_spec,
                self.seed,
                studies.join(study) if storage else 0,
                space,
                constrained=judge is not None,
            )
            self._seed_study(study, space)
            studies.recover_stale_trials(study)
            parent = self._parent_run(name)
            if parent is not None:
                parent.close_orphans(study)
            done = studies.counted_trials(study)
        n_trials = self._trial_budget(study)
        log.info(
            "Study '%s' (%s, %s): %d of %d trials already counted; search space: %s",
            name,
            ", ".join(directions),
            studies.redact_storage(self.storage_url),
            done,
            n_trials,
            ", ".join(f"{k}={_describe(d)}" for k, d in space.items()) or "(none)",
        )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = self._executor(name, pruner, sweep_dir)
        if isinstance(executor, JobExecutor):
            executor.check_storage(self.storage_url, name)
            with lock:  # jobs a killed earlier run of this command left queued or running
                executor.attach(study)
        plan = _Plan(study, lock, space, fixed, extend_space, name, parent, n_trials)
        plan.stop, plan.judge = stop, judge
        interrupted = errored = False
        try:
            self._run_trials(plan, executor)
        except KeyboardInterrupt:
            # The trial in flight stays RUNNING: the next run of the sweep fails it and
            # retries its configuration once, like a trial of a killed sweep.
            interrupted = True
            plan.stopped = Stop("interrupted", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except Exception:
            errored = True
            raise
        finally:
            executor.close()
            results = plan.results
            all_failed = bool(results) and all(r.state == FAIL for r in results)
            too_many_failed = self._failure_rate_exceeded(study)
            if too_many_failed:
                failed, finished = _failure_counts(study)
                plan.stopped = Stop("max_failure_rate", f"{failed} of {finished} trials failed")
            summary = reporting.summarize(study, plan.stopped)
            results_file = sweep_dir / "optimization_results.yaml"
            reporting.write_results(results_file, name, summary)
            if parent is not None:
                failed = all_failed or too_many_failed or errored
                status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
                with lock:  # the last process of a shared study to finish closes the run
                    others_running = bool(study.get_trials(states=(studies.TrialState.RUNNING,)))
                    parent.finish(study, summary, results_file, status, close=not others_running)
        log.info("Trials of study '%s', best first:\n%s", name, reporting.summary_table(study))
        log.info(
            "Sweep done (stopped by %s: %s): %s. %s Results: %s",
            plan.stopped.by,
            plan.stopped.reason,
            summary["counts"],
            _best(summary),
            results_file,
        )
        if too_many_failed:
            raise SweepError(self._failure_message(study, sweep_dir))
        if all_failed:
            raise SweepError(
                f"All {len(results)} trials of this sweep failed; the first: "
                f"{results[0].error}. See the trial logs under {sweep_dir}."
            )

    def _set_up_logging(self) -> None:
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        split_streams()  # warnings and errors to stderr
        # Optuna's own lines through the same handlers: its warnings to stderr, into the log.
        studies.optuna.logging.disable_default_handler()
        studies.optuna.logging.enable_propagation()

    def _judge_and_pruner(self, space: dict, n_objectives: int):
        """The constraints' judge (None without constraints) and the pruner: with
        constraints, one that compares a trial with feasible trials alone, and a sampler
        that ignores constraints refused before any study is touched."""
        pruner = studies.make_pruner(self.pruner_spec, n_objectives)
        constraints = constraining.parse(self.constraint_specs)
        if not constraints:
            return None, pruner
        studies.make_sampler(self.sampler_spec, self.seed, 0, space, constrained=True)
        return constraining.Judge(constraints), constraining.FeasibleTrialsPruner(pruner)

    def _executor(self, name: str, pruner, sweep_dir: Path):
        """Where trials run: this process (n_jobs=1), n_jobs worker processes, n_jobs
        torchrun groups of devices_per_trial ranks, or n_jobs submitit jobs (SLURM)."""
        storage = (self.storage_url, self.heartbeat)
        cluster = LAUNCHERS.get(self._launcher())
        if cluster is not None:
            return JobExecutor(
                self.config.hydra.launcher,
                cluster,
                self.n_jobs,
                self.task_function,
                storage,
                name,
                pruner,
            )
        if self.devices_per_trial > 1:
            return GroupExecutor(
                self.n_jobs,
                self.devices_per_trial,
                self.task_function,
                storage,
                name,
                pruner,
                sweep_dir,
                gpus=_gpu_count(),
            )
        if self.n_jobs == 1:
            return InProcessExecutor(self.hydra_context, self.task_function)
        return WorkerPool(self.n_jobs, self.task_function, storage, name, pruner, gpus=_gpu_count())

    def _ask(self, plan: _Plan):
        """The next trial, or None once the study holds n_trials (counted across every
        process sharing it: the count and the ask happen under the study lock)."""
        with plan.lock:
            studies.recover_stale_trials(plan.study)  # lost machines, seen at every ask
            if studies.counted_trials(plan.study) >= plan.n_trials:
                return None
            with warnings.catch_warnings():  # heartbeats serve ask-and-tell sweeps as well
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = plan.study.ask(fixed_distributions=plan.space)
            plan.study._storage.set_trial_system_attr(
                trial._trial_id, studies.WORKER_ATTR, studies.this_worker()
            )
            return trial

    def _run_trials(self, plan: _Plan, executor) -> None:
        params_of = {}
        while True:
            while executor.free and self._may_start(plan) and (trial := self._ask(plan)):
                try:
                    if plan.extend_space is not None:  # dependent and conditional parameters
                        plan.extend_space(self.config, trial)
                    overrides = [
                        *plan.fixed,
                        *(f"{k}={search_space.format_value(v)}" for k, v in trial.params.items()),
                    ]
                    params_of[trial.number] = trial.params
                    job_config = self._job_config(overrides, trial.number)
                except Exception as err:  # e.g. a sampled value the config rejects
                    result = TrialResult(trial.number, FAIL, error=f"{type(err).__name__}: {err}")
                    plan.study._storage.set_trial_system_attr(
                        trial._trial_id, studies.ERROR_ATTR, result.error
                    )
                    plan.study.tell(trial, state=studies.TrialState.FAIL)
                    plan.results.append(result)
                    log.info(reporting.trial_line(result, trial.params))
                    continue
                context = TrialContext(
                    trial,
                    plan.name,
                    plan.parent.run_id if plan.parent else None,
                    self.n_jobs > 1,
                    wanted_measures=plan.wanted_measures,
                )
                executor.submit(trial, job_config, context)
            if not executor.busy:
                if plan.stopped is None and self._others_may_need_retries(plan):
                    continue
                if plan.stopped is None:
                    plan.stopped = Stop("n_trials", f"the study holds {plan.n_trials} trials")
                return
            result = executor.next_result()
            trial = self._record(plan, result)
            plan.results.append(result)
            log.info(reporting.trial_line(result, params_of.get(result.number, trial.params)))

    def _may_start(self, plan: _Plan) -> bool:
        """Whether a new trial may start: no stop condition met, the failure rate not
        exceeded (running trials finish either way)."""
        if self._failure_rate_exceeded(plan.study):
            return False
        if plan.stopped is None:
            plan.stopped = plan.stop.check(plan.study)
            if plan.stopped is not None:
                log.info("Stopping: %s. Running trials finish.", plan.stopped.reason)
        return plan.stopped is None

    @staticmethod
    def _record(plan: _Plan, result: TrialResult):
        """Tell the study how a trial ended (once: a trial a lost heartbeat already failed
        is left as it is); the trial as it was before."""
        study, storage = plan.study, plan.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, result.number)
        trial = storage.get_trial(trial_id)  # this one trial, not the whole study
        if trial.state.is_finished():
            return trial
        if result.lost:  # its job ended without a result: FAIL, and queued once more
            with plan.lock:
                studies.fail_and_retry(study, trial, f"{studies.JOB_LOST}: {result.error}")
                if plan.parent is not None:  # the run its job left RUNNING: KILLED
                    plan.parent.close_orphans(study)
        elif result.state == COMPLETE:
            judge = plan.judge
            missing = judge.missing(trial) if judge else []
            if missing:  # a task that does not record what the constraints bound
                message = constraining.missing_measures_message(
                    result.number, missing, trial.user_attrs.get(MEASURES_ATTR) or {}
                )
                storage.set_trial_system_attr(trial_id, studies.ERROR_ATTR, message)
                study.tell(result.number, state=studies.TrialState.FAIL)
                raise SweepError(message)
            if judge:  # before the tell: a finished trial cannot be changed
                feasible = judge.set_on(storage, trial)
                if plan.parent is not None and "mlflow_run_id" in trial.user_attrs:
                    plan.parent.tag_trial_run(
                        trial.user_attrs["mlflow_run_id"], "optuna.feasible", str(feasible).lower()
                    )
            study.tell(result.number, result.value)
        else:
            if result.error:  # the failure-rate stop names the last failed trial's error
                storage.set_trial_system_attr(trial_id, studies.ERROR_ATTR, result.error)
            if plan.judge and result.state == PRUNED:  # Optuna's samplers read them too
                plan.judge.set_on(storage, trial)
            study.tell(result.number, state=studies.TrialState[result.state])
        return trial

    def _direction_overrides(self, directions: list[str]) -> list[str]:
        """The override that makes every trial's `optimized_direction` follow
        `hydra.sweeper.direction` (none where the task has no such key, the direction was
        not set on the sweeper, or the command line gave the same already)."""
        if self.direction is None or "optimized_direction" not in self.config:
            return []
        if self._overridden("optimized_direction") is not None:
            return []  # checked equal in _directions
        value = directions[0] if len(directions) == 1 else "[" + ",".join(directions) + "]"
        return [f"optimized_direction={value}"]

    def _task_value(self, key: str):
        """A top-level key of the app's config, resolved (the project's app takes its
        objective from the task: `${task.metric}`), as plain values; None if absent."""
        value = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
        return value.value if hasattr(value, "value") and not isinstance(value, str) else value

    def _overridden(self, key: str) -> str | None:
        """The value given to `key` on the command line, if any."""
        for override in self.config.hydra.overrides.task:
            name, _, value = str(override).lstrip("+~").partition("=")
            if name == key:
                return value
        return None

    def _others_may_need_retries(self, plan: _Plan) -> bool:
        """With heartbeats, a process whose own budget is spent waits while trials of other
        processes run: if one of them goes silent (its machine died), this process fails it
        and runs its retry. Without heartbeats nothing tells a lost machine from a slow one."""
        interval = self.heartbeat["heartbeat_interval"]
        if not interval or not self.storage_url or self._failure_rate_exceeded(plan.study):
            return False
        running = plan.study.get_trials(deepcopy=False, states=(studies.TrialState.RUNNING,))
        if not running:
            return False
        time.sleep(1.0)
        return True

    def _job_config(self, overrides: list[str], number: int) -> DictConfig:
        job_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(job_config):
            job_config.hydra.job.id = f"trial_{number}"
            job_config.hydra.job.num = number
            # Fixed here: another process resolving ${now:} later would pick another folder.
            job_config.hydra.sweep.dir = str(self.config.hydra.sweep.dir)
            job_config.hydra.sweep.subdir = str(job_config.hydra.sweep.subdir)
        return job_config

    # ------------------------------------------------------------------ settings

    def _directions(self) -> list[str]:
        """One source for the study's directions: `hydra.sweeper.direction` when set (the
        trials' `optimized_direction` then follows it), else the app's
        `optimized_direction`, else minimize (as the official plugin)."""
        task = {key: self._task_value(key) for key in ("optimized_direction", "optimized_metric")}
        given = self.direction if self.direction is not None else task.get("optimized_direction")
        given = given or "minimize"
        directions = _as_list(given)
        if not directions or any(d not in DIRECTIONS for d in directions):
            raise SweepError(
                f"hydra.sweeper.direction={given}: use maximize or minimize, or a list of "
                "them (one per objective)"
            )
        on_command_line = self._overridden("optimized_direction")
        disagree = _as_list(task.get("optimized_direction")) != directions
        if self.direction is not None and on_command_line is not None and disagree:
            raise SweepError(
                f"hydra.sweeper.direction={given} and optimized_direction="
                f"{on_command_line} disagree. Set one of them: the sweeper's direction, "
                "when set, is what every trial's optimized_direction follows."
            )
        metrics = task.get("optimized_metric")
        if (
            self.direction is not None
            and metrics is not None
            and len(_as_list(metrics)) != len(directions)
        ):
            raise SweepError(
                f"hydra.sweeper.direction={given} gives {len(directions)} direction(s) for "
                f"optimized_metric={metrics}: give one direction per optimized metric."
            )
        return directions

    def _check_settings(self) -> None:
        if self.n_trials < 1:
            raise SweepError(f"hydra.sweeper.n_trials={self.n_trials}: needs an integer >= 1")
        if self.n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_jobs={self.n_jobs}: needs an integer >= 1")
        if self.n_jobs > 1 and not self.storage_url:
            raise SweepError(
                "hydra.sweeper.n_jobs > 1 needs a database storage that the "
                "workers share: set hydra.sweeper.storage=sqlite:///multirun/optuna.db"
            )
        self._check_devices_per_trial()
        if not isinstance(self.max_failure_rate, float | int) or not (
            0.0 <= self.max_failure_rate <= 1.0
        ):
            raise SweepError(
                f"hydra.sweeper.max_failure_rate={self.max_failure_rate}: needs a number in "
                "[0, 1] (the share of finished trials that may fail)"
            )

    def _check_devices_per_trial(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would run its own sweep
            raise SweepError(
                "a sweep does not run under torchrun: start it as one command and set "
                "hydra.sweeper.devices_per_trial=K to train each trial on K devices"
            )
        k = self.devices_per_trial
        if not isinstance(k, int) or k < 1:
            raise SweepError(f"hydra.sweeper.devices_per_trial={k}: needs an integer >= 1")
        if k > 1 and not self.storage_url:
            raise SweepError(
                "hydra.sweeper.devices_per_trial > 1 runs each trial as its own process "
                "group, which reports through a database storage: set "
                "hydra.sweeper.storage=sqlite:///multirun/optuna.db"
            )
        gpus = _gpu_count() if k > 1 else 0  # torch is imported only where it is needed
        if k > 1 and gpus and k * self.n_jobs > gpus:
            raise SweepError(
                f"hydra.sweeper.devices_per_trial={k} x n_jobs={self.n_jobs} needs "
                f"{k * self.n_jobs} GPUs; this machine has {gpus}. Lower n_jobs or "
                "devices_per_trial."
            )

    def _launcher(self) -> str | None:
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default={}) or {}
        return choices.get("hydra/launcher")

    def _warn_about_launcher(self) -> None:
        launcher = self._launcher()
        if launcher in LAUNCHERS:
            if not self.storage_url:
                raise SweepError(
                    f"hydra/launcher={launcher} runs each trial as a job that reports to the "
                    "study through its database: set hydra.sweeper.storage to one the jobs "
                    "reach (postgresql://..., or sqlite:/// on a filesystem they share)"
                )
            if self.devices_per_trial > 1:
                raise SweepError(
                    f"hydra/launcher={launcher} with hydra.sweeper.devices_per_trial > 1: ask "
                    "for the GPUs per job with hydra.launcher.gpus_per_node instead"
                )
            return
        if launcher not in (None, "basic"):
            log.warning(
                "hydra/launcher=%s is not used: this sweeper runs each trial in its own "
                "process (n_jobs=1) or in hydra.sweeper.n_jobs long-lived worker processes; "
                "set hydra.sweeper.n_jobs for parallel trials.",
                launcher,
            )

    def _custom_search_space(self):
        if not self.custom_search_space:
            return None
        try:
            return get_method(self.custom_search_space)
        except Exception as err:
            raise SweepError(
                f"hydra.sweeper.custom_search_space={self.custom_search_space}: cannot import "
                f"it ({type(err).__name__}: {err}). Give the dotted path of a function "
                "(cfg, trial) -> None."
            ) from None

    def _seed_study(self, study, space: dict) -> None:
        """Warm start from another study, then the queued parameter sets (under the lock)."""
        # Only a new study is seeded: a rerun does not read the other study again.
        if self.warm_start and not study.get_trials(deepcopy=False):
            spec = self.warm_start
            source_name = spec if isinstance(spec, str) else spec.get("study_name")
            source_url = (
                None if isinstance(spec, str) else spec.get("storage")
            ) or self.storage_url
            if not source_url:
                raise SweepError(
                    "hydra.sweeper.warm_start reads another study from a database storage: "
                    "set hydra.sweeper.storage (or warm_start.storage)"
                )
            same = source_url == self.storage_url
            try:
                source = studies.optuna.load_study(
                    study_name=source_name,
                    storage=study._storage if same else studies.make_storage(source_url),
                )
            except KeyError:
                raise SweepError(
                    f"hydra.sweeper.warm_start: no study '{source_name}' in "
                    f"{studies.redact_storage(source_url)}"
                ) from None
            copied = studies.warm_start(study, source, space)
            if copied:
                log.info(
                    "Warm start: %d finished trials of '%s' seed this study.", copied, source_name
                )
        studies.enqueue(study, self.enqueue_trials, space)

    def _trial_budget(self, study) -> int:
        size = studies.grid_size(study.sampler)
        if size is not None and size < self.n_trials:
            log.info("Grid search: %d points, so at most %d trials.", size, size)
            return size
        return self.n_trials

    def _failure_rate_exceeded(self, study) -> bool:
        if self.max_failure_rate >= 1.0:
            return False
        failed, finished = _failure_counts(study)
        return finished > 0 and failed / finished > self.max_failure_rate

    def _failure_message(self, study, sweep_dir: Path) -> str:
        failed, finished = _failure_counts(study)
        last = _last_failed(study)
        cause = ""
        if last is not None:
            error = last.system_attrs.get(studies.ERROR_ATTR) or last.system_attrs.get(
                studies.FAIL_REASON_ATTR, "no error recorded"
            )
            cause = f" The last failed trial, {last.number}: {error}."
        return (
            f"{failed} of {finished} finished trials failed ({failed / finished:.0%}), more "
            f"than hydra.sweeper.max_failure_rate={self.max_failure_rate}: the sweep stopped."
            f"{cause} The trials' logs are under {sweep_dir}; the study and its MLflow runs "
            "are kept."
        )

    def _parent_run(self, name: str):
        tracking = OmegaConf.select(self.config, "tracking")
        if tracking is None or not tracking.get("enabled", False):
            return None
        return reporting.ParentRun(tracking, name, self.storage_url)


class _Plan:
    """What the trial loop works with, and what it found: its results and why it stopped."""

    def __init__(self, study, lock, space, fixed, extend_space, name, parent, n_trials):
        self.study, self.lock, self.space, self.fixed = study, lock, space, fixed
        self.extend_space, self.name, self.parent = extend_space, name, parent
        self.n_trials = n_trials
        self.stop = StopConditions()
        self.judge: constraining.Judge | None = None
        self.results: list[TrialResult] = []
        self.stopped: Stop | None = None

    @property
    def wanted_measures(self) -> tuple[str, ...]:
        return tuple(c.measure for c in self.judge.constraints) if self.judge else ()


def _last_failed(study):
    """The counted failed trial that ended last (None if there is none)."""
    failed = [t for t in _counted_finished(study) if t.state == studies.TrialState.FAIL]
    return max(
        failed,
        key=lambda t: (t.datetime_complete is not None, t.datetime_complete, t.number),
        default=None,
    )


def _as_list(value) -> list:
    return [value] if isinstance(value, str) or value is None else list(value)


def _counted_finished(study) -> list:
    trials = study.get_trials(deepcopy=False, states=studies.FINISHED)
    return [t for t in trials if studies.is_counted(t)]


def _failure_counts(study) -> tuple[int, int]:
    finished = _counted_finished(study)
    return sum(t.state == studies.TrialState.FAIL for t in finished), len(finished)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _best(summary: dict) -> str:
    if summary.get("solutions") is not None:
        return f"Pareto front: {len(summary['solutions'])} trials."
    if summary["best_value"] is None:
        return "Best: none yet."
    return f"Best value {summary['best_value']:.4f} with {summary['best_params']}."


def default_study_name(space: dict, fixed: list[str]) -> str:
    """The same search space and fixed overrides give the same name, so a rerun resumes."""
    text = repr(sorted((k, repr(v)) for k, v in space.items())) + repr(sorted(fixed))
    return "sweep-" + hashlib.sha1(text.encode()).hexdigest()[:10]


def _describe(distribution) -> str:
    shown = {k: v for k, v in distribution.__dict__.items() if v is not None and v is not False}
    return type(distribution).__name__.replace("Distribution", "").lower() + str(shown)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
