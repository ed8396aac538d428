"""A Hydra sweeper on Optuna: ask a trial, run it as a Hydra job, tell the result.

A superset of the official `hydra-optuna-sweeper` (which pins optuna<3): the same config
API (`params`, the `hydra/sweeper/sampler` group, `direction` as a string or a list,
`max_failure_rate`, `custom_search_space`) plus pruning (the job reports every epoch to its
trial), resume (`n_trials` counts the study's finished trials across runs), failure
isolation (a failing trial is FAIL, the sweep goes on), non-blocking parallel workers,
grid search to the last point, warm starts, heartbeats for lost machines and MLflow
parent/child runs.

This class holds the settings and the wiring; the loop over trials is trial_loop.py, the
places trials run are the executors (executors.py, workers.py, groups.py, jobs.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import configure_log, setup_globals
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from experiment.config.secret_sealing import seal_config
from experiment.errors import EnvironmentFailure, ExperimentError, SweepError
from experiment.sweep import constraints as constraining
from experiment.sweep import objectives, reporting, search_space
from experiment.sweep import study as studies
from experiment.sweep.composition import TrialComposer
from experiment.sweep.executors import Executor, InProcessExecutor
from experiment.sweep.failures import FailureRate, failure_counts
from experiment.sweep.groups import GroupExecutor
from experiment.sweep.jobs import JobExecutor
from experiment.sweep.locking import StudyLock
from experiment.sweep.settings import (
    LAUNCHERS,
    SweepSettings,
    gpu_count,
)
from experiment.sweep.stopping import Stop, StopConditions
from experiment.sweep.trial_loop import TrialLoop
from experiment.sweep.workers import WorkerPool
from experiment.system.console import split_streams
from experiment.system.secrets import redact
from experiment.system.signals import stop_on_sigterm

log = logging.getLogger(__name__)


class SweepEngine(Sweeper):
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
        preload: list | None = None,
        max_retries: int = 3,
        repeats: int = 1,
        seed_key: str = "trainer.seed",
        folds: int = 1,
        fold_key: str = "dataset.fold",
        warm_up_function: str | None = None,
        preload_function: str | None = None,
        storage_patience: float = 120.0,
    ):
        self.settings = SweepSettings.of(**{k: v for k, v in locals().items() if k != "self"})

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

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
        settings = self.settings
        stop_on_sigterm()
        setup_globals()
        self._set_up_logging()
        directions = objectives.study_directions(settings.direction, self.config)
        settings.check()
        settings.units.check(self.config)
        stop = StopConditions.from_settings(
            settings.timeout, settings.target, settings.patience, n_objectives=len(directions)
        )
        settings.check_launcher(self._launcher())
        space, fixed = search_space.build(settings.params, arguments)
        extend_space = search_space.custom_space_function(settings.custom_search_space)
        location = settings.location(settings.study_name or default_study_name(space, fixed))
        fixed = [
            *fixed,
            *objectives.direction_overrides(settings.direction, self.config, directions),
        ]
        judge, pruner = self._judge_and_pruner(space, len(directions))
        self.composer = TrialComposer(self.hydra_context.config_loader, self.config, fixed)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # Started before the study is opened: workers get ready while the study and the
        # parent run are set up.
        executor = self._executor(location, pruner, sweep_dir, fixed)
        try:
            loop = self._open_study(location, directions, pruner, space, fixed, judge is not None)
        except BaseException:
            executor.close()
            raise
        loop.stop, loop.judge, loop.extend_space = stop, judge, extend_space
        loop.while_waiting = loop.parent.prepare_plots if loop.parent else None
        stop: KeyboardInterrupt | None = None
        errored = False
        try:
            executor.prepare(loop.study, loop.lock)
            loop.run(executor)
        except KeyboardInterrupt as interrupt:
            stop = interrupt
            loop.stopped = Stop("interrupted", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except Exception:
            errored = True
            raise
        finally:
            executor.close()
            summary, results_file = self._finish(loop, location, sweep_dir, bool(stop), errored)
            if stop is not None:
                stop.add_note(stop_note(loop))
        report(loop, location, summary, results_file, sweep_dir)

    def _open_study(self, location, directions, pruner, space, fixed, constrained) -> TrialLoop:
        """Join (or create) the study under its lock: its sampler, queued and warm-start
        trials, recovery of trials lost by killed processes, the parent run."""
        settings = self.settings
        storage = location.open_storage()
        # Every sweep process joining the study takes this lock for the steps that must not
        # interleave with another's: joining, recovery, the parent run, counting + asking.
        lock = StudyLock(
            location.storage_url,
            location.name,
            getattr(storage, "engine", None),
            getattr(storage, "patience", None),
        )
        with lock:
            study = studies.load_or_create(location.name, storage, directions, pruner)
            joined = studies.join(study) if storage else 0
            study.sampler = studies.make_sampler(
                settings.sampler, settings.seed, joined, space, constrained=constrained
            )
            studies.seed_study(
                study, location.storage_url, settings.warm_start, settings.enqueue_trials, space
            )
            studies.recover_stale_trials(study, settings.max_retries, settings.unclaimed_after)
            parent = self._parent_run(location, *studies.identity(study))
            if parent is not None:
                parent.close_orphans(study)
            done = studies.counted_trials(study)
        n_trials = studies.trial_budget(study, settings.n_trials)
        log.info(
            "Study '%s' (%s, %s): %d of %d trials already counted; search space: %s",
            location.name,
            ", ".join(directions),
            studies.redact_storage(location.storage_url),
            done,
            n_trials,
            ", ".join(f"{k}={search_space.describe(d)}" for k, d in space.items()) or "(none)",
        )
        return TrialLoop(
            study=study,
            lock=lock,
            space=space,
            fixed=fixed,
            n_trials=n_trials,
            job_config=self._job_config,
            failure_rate=FailureRate(settings.max_failure_rate),
            app_config=self.config,
            parent=parent,
            parallel=settings.n_jobs > 1,
            waits_for_lost_peers=bool(settings.heartbeat_interval and settings.storage),
            max_retries=settings.max_retries,
            units=settings.units,
            unclaimed_after=settings.unclaimed_after,
        )

    def _finish(self, loop: TrialLoop, location, sweep_dir: Path, interrupted, errored):
        """The results file and the parent run's end, however the loop ended."""
        study = loop.study
        try:
            too_many_failed = loop.failure_rate.exceeded(study)  # read once: it reads the study
            if too_many_failed:
                failed, finished = failure_counts(study)
                loop.stopped = Stop("max_failure_rate", f"{failed} of {finished} trials failed")
            summary = reporting.summarize(study, loop.stopped)
        except EnvironmentFailure:  # the study's storage is gone: the parent's end is not
            if loop.parent is not None:
                loop.parent.client.set_terminated(
                    loop.parent.run_id, "KILLED" if interrupted else "FAILED"
                )
            raise
        results_file = sweep_dir / "optimization_results.yaml"
        try:
            reporting.write_results(results_file, location.name, summary)
        except OSError as err:  # a full disk: the parent run's end is written all the same
            log.warning("Could not write %s: %s", results_file, err.strerror or err)
            results_file = None
        if loop.parent is not None:
            lost = loop.stopped is not None and loop.stopped.by == "environment"
            failed = loop.all_failed or too_many_failed or errored or lost
            status = "KILLED" if interrupted else "FAILED" if failed else "FINISHED"
            with loop.lock:  # the last process of a shared study to finish closes the run
                others_running = bool(study.get_trials(states=(studies.TrialState.RUNNING,)))
                loop.parent.finish(study, summary, results_file, status, close=not others_running)
        return summary, results_file

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
        settings = self.settings
        pruner = settings.make_pruner(n_objectives)
        constraints = constraining.parse(settings.constraints)
        if not constraints:
            return None, pruner
        studies.make_sampler(settings.sampler, settings.seed, 0, space, constrained=True)
        return constraining.Judge(constraints), constraining.FeasibleTrialsPruner(pruner)

    def _executor(self, location, pruner, sweep_dir: Path, fixed: list[str]) -> Executor:
        """Where trials run: this process (n_jobs=1), n_jobs worker processes, n_jobs
        torchrun groups of devices_per_trial ranks, or n_jobs submitit jobs (SLURM)."""
        settings, task = self.settings, self.task_function
        cluster = LAUNCHERS.get(self._launcher())
        if cluster is not None:
            launcher = self.config.hydra.launcher
            return JobExecutor(launcher, cluster, settings.n_jobs, task, location, pruner)
        if settings.devices_per_trial > 1:
            k = settings.devices_per_trial
            return GroupExecutor(
                settings.n_jobs, k, task, location, pruner, sweep_dir, gpus=gpu_count()
            )
        if settings.n_jobs == 1:
            return InProcessExecutor(self.hydra_context, task)
        warm_up = settings.warm_up(self._job_config(fixed, 0))  # the sweep's fixed overrides
        grace = settings.worker_grace_seconds
        return WorkerPool(settings.n_jobs, task, location, pruner, gpu_count(), warm_up, grace)

    def _job_config(self, overrides: list[str], number: int) -> DictConfig:
        job_config = self.composer.compose(overrides)
        seal_config(job_config)  # a secret from a config file, before any process writes it
        with open_dict(job_config):
            job_config.hydra.job.id = f"trial_{number}"
            job_config.hydra.job.num = number
            # Fixed here: another process resolving ${now:} later would pick another folder.
            job_config.hydra.sweep.dir = str(self.config.hydra.sweep.dir)
            job_config.hydra.sweep.subdir = str(job_config.hydra.sweep.subdir)
        return job_config

    def _launcher(self) -> str | None:
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default={}) or {}
        return choices.get("hydra/launcher")

    def _parent_run(self, location, study_uid: str, legacy: bool):
        # Any task function may be swept: one without a `tracking` node has no parent run.
        if not OmegaConf.select(self.config, "tracking.enabled", default=False):
            return None
        tracking = self.config.tracking
        return reporting.ParentRun(
            tracking, location.name, location.storage_url, study_uid, legacy, location.patience
        )


def report(loop: TrialLoop, location, summary, results_file, sweep_dir) -> None:
    """The summary lines; SweepError where too many, or all, trials failed."""
    study, results = loop.study, loop.results
    log.info("Trials of study '%s', best first:\n%s", location.name, reporting.summary_table(study))
    log.info(
        "Sweep done (stopped by %s: %s): %s. %s Results: %s",
        loop.stopped.by,
        loop.stopped.reason,
        summary["counts"],
        reporting.best_line(summary),
        results_file or "(not written)",
    )
    if loop.stopped.by == "environment":
        raise SweepError(
            f"The sweep stopped: {loop.stopped.reason} It does not count toward n_trials; "
            "once that is fixed, the same command continues the study and retries it "
            "from its checkpoint."
        )
    if loop.stopped.by == "max_failure_rate":  # as _finish recorded it
        raise SweepError(loop.failure_rate.message(study, sweep_dir))
    if loop.all_failed:
        raise SweepError(
            f"All {len(results)} trials of this sweep failed; the first: "
            f"{results[0].error}. See the trial logs under {sweep_dir}."
        )


def stop_note(loop: TrialLoop) -> str:
    """What the line of a stopped sweep says after its trial's run: the parent run's end,
    and how the trials in flight go on. Those stay RUNNING in the study: the next run of
    the sweep fails each and retries its configuration once, like a killed sweep's."""
    me = studies.this_worker()
    cut_short = [
        t
        for t in loop.study.get_trials(deepcopy=False, states=(studies.TrialState.RUNNING,))
        if t.system_attrs.get(studies.WORKER_ATTR) == me
    ]
    parts = [f"the sweep's MLflow run {loop.parent.run_id} marked KILLED"] if loop.parent else []
    count = len(cut_short)
    retried = f", retrying the {count} trial{'s' * (count != 1)} cut short once" if count else ""
    return "; ".join([*parts, f"the same command continues the study{retried}"])


def default_study_name(space: dict, fixed: list[str]) -> str:
    """The same search space and fixed overrides give the same name, so a rerun resumes."""
    # Secrets masked: a rotated password is the same sweep.
    text = repr(sorted((k, repr(v)) for k, v in space.items())) + repr(sorted(map(redact, fixed)))
    return "sweep-" + hashlib.sha1(text.encode()).hexdigest()[:10]
