"""A Hydra sweeper on Optuna: ask a trial, run it as a Hydra job, tell the result.

Differences from the official `hydra-optuna-sweeper` (which pins optuna<3):
pruning (the job reports every epoch to its trial), resume (`n_trials` counts the study's
finished trials across runs), failure isolation (a failing trial is FAIL, the sweep goes
on), non-blocking parallel workers, and MLflow parent/child runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.utils import configure_log, setup_globals
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from experiment.errors import ExperimentError, SweepError
from experiment.runtime import stop_on_sigterm
from experiment.sweep_context import COMPLETE, FAIL, TrialContext
from hydra_plugins.experiment_optuna_sweeper import reporting, search_space
from hydra_plugins.experiment_optuna_sweeper import study as studies
from hydra_plugins.experiment_optuna_sweeper.locking import StudyLock
from hydra_plugins.experiment_optuna_sweeper.workers import (
    InProcessExecutor,
    TrialResult,
    WorkerPool,
)

log = logging.getLogger(__name__)


class ExperimentOptunaSweeper(Sweeper):
    def __init__(
        self,
        direction: str | None,
        n_trials: int,
        n_jobs: int,
        study_name: str | None,
        storage: str | None,
        sampler: Any,
        seed: int | None,
        pruner: Any,
        params: dict | None,
    ):
        self.direction, self.n_trials, self.n_jobs = direction, n_trials, n_jobs
        self.study_name, self.storage_url = study_name, storage
        self.sampler_spec, self.seed, self.pruner_spec = sampler, seed, pruner
        self.params = params or {}

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    # ------------------------------------------------------------------ the sweep

    def sweep(self, arguments: list[str]) -> Any:
        try:
            return self._sweep(arguments)
        except ExperimentError as err:  # one clear line, as for a single run
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            log.error(f"{type(err).__name__}: {err}")
            raise SystemExit(err.exit_code) from None

    def _sweep(self, arguments: list[str]) -> Any:
        stop_on_sigterm()
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        self._check_settings()
        space, fixed = search_space.build(
            OmegaConf.to_container(self.params, resolve=True)
            if OmegaConf.is_config(self.params)
            else self.params,
            arguments,
        )
        name = self.study_name or default_study_name(space, fixed)
        direction = self.direction or self._task_direction()
        storage = studies.make_storage(self.storage_url)
        pruner = studies.make_pruner(self.pruner_spec)
        # Every sweep process joining the study takes this lock for the steps that must not
        # interleave with another's: joining, recovery, the parent run, counting + asking.
        lock = StudyLock(self.storage_url, name, getattr(storage, "engine", None))
        with lock:
            study = studies.load_or_create(name, storage, direction, None, pruner)
            study.sampler = studies.make_sampler(
                self.sampler_spec, self.seed, studies.join(study) if storage else 0
            )
            studies.recover_stale_trials(study)
            parent = self._parent_run(name)
            if parent is not None:
                parent.close_orphans(study)
            done = studies.counted_trials(study)
        log.info(
            "Study '%s' (%s, %s): %d of %d trials already counted; search space: %s",
            name,
            direction,
            studies.redact_storage(self.storage_url),
            done,
            self.n_trials,
            ", ".join(f"{k}={_describe(d)}" for k, d in space.items()) or "(none)",
        )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        executor = (
            InProcessExecutor(self.hydra_context, self.task_function)
            if self.n_jobs == 1
            else WorkerPool(
                self.n_jobs, self.task_function, self.storage_url, name, pruner, gpus=_gpu_count()
            )
        )
        results, interrupted = [], False
        try:
            results = self._run_trials(study, lock, executor, space, fixed, name, parent)
        except KeyboardInterrupt:
            # The trial in flight stays RUNNING: the next run of the sweep fails it and
            # retries its configuration once, like a trial of a killed sweep.
            interrupted = True
            raise
        finally:
            executor.close()
            summary = reporting.summarize(study)
            results_file = sweep_dir / "optimization_results.yaml"
            reporting.write_results(results_file, name, summary)
            all_failed = bool(results) and all(r.state == FAIL for r in results)
            if parent is not None:
                status = "KILLED" if interrupted else "FAILED" if all_failed else "FINISHED"
                with lock:  # the last process of a shared study to finish closes the run
                    others_running = bool(study.get_trials(states=(studies.TrialState.RUNNING,)))
                    parent.finish(study, summary, results_file, status, close=not others_running)
        log.info("Trials of study '%s', best first:\n%s", name, reporting.summary_table(study))
        log.info(
            "Sweep done: %s. Best %s. Results: %s",
            summary["counts"],
            f"value {summary['best_value']:.4f} with {summary['best_params']}"
            if summary["best_value"] is not None
            else "none yet",
            results_file,
        )
        if all_failed:
            raise SweepError(
                f"All {len(results)} trials of this sweep failed; the first: "
                f"{results[0].error}. See the trial logs under {sweep_dir}."
            )
        return [[r] for r in results]

    def _ask(self, study, lock, space):
        """The next trial, or None once the study holds n_trials (counted across every
        process sharing it: the count and the ask happen under the study lock)."""
        with lock:
            if studies.counted_trials(study) >= self.n_trials:
                return None
            trial = study.ask(fixed_distributions=space)
            study._storage.set_trial_system_attr(
                trial._trial_id, studies.WORKER_ATTR, studies.this_worker()
            )
            return trial

    def _run_trials(self, study, lock, executor, space, fixed, name, parent) -> list:
        results, params_of = [], {}
        while True:
            while executor.free and (trial := self._ask(study, lock, space)) is not None:
                overrides = [
                    *fixed,
                    *(f"{k}={search_space.format_value(v)}" for k, v in trial.params.items()),
                ]
                params_of[trial.number] = trial.params
                context = TrialContext(
                    trial, name, parent.run_id if parent else None, quiet=self.n_jobs > 1
                )
                try:
                    job_config = self._job_config(overrides, trial.number)
                except Exception as err:  # e.g. a sampled value the config rejects
                    result = TrialResult(trial.number, FAIL, error=f"{type(err).__name__}: {err}")
                    study.tell(trial, state=studies.TrialState.FAIL)
                    results.append(result)
                    log.info(reporting.trial_line(result, trial.params))
                    continue
                executor.submit(trial, job_config, context)
            if not executor.busy:
                return results
            result = executor.next_result()
            if result.state == COMPLETE:
                study.tell(result.number, result.value)
            else:
                study.tell(result.number, state=studies.TrialState[result.state])
            results.append(result)
            log.info(reporting.trial_line(result, params_of.get(result.number, {})))

    def _job_config(self, overrides: list[str], number: int) -> DictConfig:
        job_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(job_config):
            job_config.hydra.job.id = f"trial_{number}"
            job_config.hydra.job.num = number
        return job_config

    # ------------------------------------------------------------------ helpers

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
        if self.direction not in (None, "maximize", "minimize"):
            raise SweepError(f"hydra.sweeper.direction={self.direction}: use maximize or minimize")

    def _task_direction(self) -> str:
        task = OmegaConf.to_container(self.config, resolve=False, enum_to_str=True)
        return str(task.get("optimized_direction") or "maximize")

    def _parent_run(self, name: str):
        tracking = OmegaConf.select(self.config, "tracking")
        if tracking is None or not tracking.get("enabled", False):
            return None
        return reporting.ParentRun(tracking, name, self.storage_url)


def default_study_name(space: dict, fixed: list[str]) -> str:
    """The same search space and fixed overrides give the same name, so a rerun resumes."""
    text = repr(sorted((k, repr(v)) for k, v in space.items())) + repr(sorted(fixed))
    return "sweep-" + hashlib.sha1(text.encode()).hexdigest()[:10]


def _describe(distribution) -> str:
    return type(distribution).__name__.replace("Distribution", "").lower() + str(
        {k: v for k, v in distribution.__dict__.items() if v not in (None, False)}
    )


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
