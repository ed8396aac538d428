"""The trial loop: ask the study for a trial, run it on an executor, record how it ended.

Runs until the study holds n_trials counted trials (across every process that shares
it), a stop condition is met or too many trials failed; running trials finish either way.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from experiment.errors import SweepError
from experiment.sweep import constraints as constraining
from experiment.sweep import optuna_internals as internals
from experiment.sweep import reporting, search_space
from experiment.sweep import study as studies
from experiment.sweep.context import COMPLETE, FAIL, MEASURES_ATTR, PRUNED, TrialContext
from experiment.sweep.executors import Executor, TrialResult
from experiment.sweep.failures import FailureRate
from experiment.sweep.protocol import CONTINUES_ATTR, RUN_ID_ATTR, LostAttempt
from experiment.sweep.repeats import Units
from experiment.sweep.stopping import Stop, StopConditions
from experiment.system.signals import uninterrupted

log = logging.getLogger(__name__)


@dataclass
class TrialLoop:
    """What the loop works with, and what it found: its results and why it stopped."""

    study: object  # optuna.Study
    lock: object  # StudyLock: counting + asking, recovery, the parent run
    space: dict  # the search space's distributions
    fixed: list[str]  # overrides every trial gets
    n_trials: int
    job_config: Callable  # (overrides, trial number) -> the trial's composed job config
    failure_rate: FailureRate
    extend_space: Callable | None = None  # custom_search_space(cfg, trial)
    app_config: object = None  # what extend_space reads
    parent: object = None  # reporting.ParentRun, or None without tracking
    parallel: bool = False  # trials in other processes (n_jobs > 1)
    waits_for_lost_peers: bool = False  # heartbeats on a shared storage (see below)
    stop: StopConditions = field(default_factory=StopConditions)
    judge: constraining.Judge | None = None
    max_retries: int = studies.DEFAULT_MAX_RETRIES  # per configuration, after lost trials
    # Seconds an asked trial may stay without its worker (recover_stale_trials).
    unclaimed_after: float = studies.DEFAULT_PATIENCE_S + studies.UNCLAIMED_MARGIN_S
    units: Units = field(default_factory=Units)  # seeds x folds per configuration
    # Called once, when the loop first waits for a result: work for the end of the sweep
    # done while the first trials run (the parent run's plotting imports).
    while_waiting: Callable | None = None
    results: list[TrialResult] = field(default_factory=list)
    stopped: Stop | None = None

    @property
    def all_failed(self) -> bool:
        return bool(self.results) and all(r.state == FAIL for r in self.results)

    @property
    def wanted_measures(self) -> tuple[str, ...]:
        return tuple(c.measure for c in self.judge.constraints) if self.judge else ()

    def run(self, executor: Executor) -> None:
        params_of = {}
        self.stop.start_clock()
        while True:
            while executor.free and self._may_start() and (trial := self._ask()):
                params_of[trial.number] = self._submit(trial, executor)
            if not executor.busy:
                if self.stopped is None and self._others_may_need_retries():
                    continue
                if self.stopped is None:
                    self.stopped = Stop("n_trials", f"the study holds {self.n_trials} trials")
                return
            if self.while_waiting is not None:
                self.while_waiting, prepare = None, self.while_waiting
                prepare()
            result = executor.next_result()
            trial = self._record(result)
            self.results.append(result)
            log.info(reporting.trial_line(result, params_of.get(result.number, trial.params)))
            if result.stops_sweep and self.stopped is None:  # the next trials would fail too
                self.stopped = Stop("environment", f"trial {result.number} was lost: {result.lost}")
                log.warning(
                    "Stopping: trial %d was lost to a failure of the machine or a "
                    "store. Running trials finish.",
                    result.number,
                )

    def _submit(self, trial, executor: Executor) -> dict:
        """Compose the trial's job and hand it to the executor; a trial whose config
        cannot be composed (a sampled value the config rejects) fails here. Its params."""
        try:
            if self.extend_space is not None:  # dependent and conditional parameters
                self.extend_space(self.app_config, trial)
            sampled = (f"{k}={search_space.format_value(v)}" for k, v in trial.params.items())
            job_config = self.job_config([*self.fixed, *sampled], trial.number)
        except Exception as err:
            result = TrialResult(trial.number, FAIL, error=f"{type(err).__name__}: {err}")
            internals.set_system_attr(self.study, trial, studies.ERROR_ATTR, result.error)
            self.study.tell(trial, state=studies.TrialState.FAIL)
            self.results.append(result)
            log.info(reporting.trial_line(result, trial.params))
            return trial.params
        context = TrialContext(
            trial,
            self.study.study_name,
            self.parent.run_id if self.parent else None,
            self.parallel,
            wanted_measures=self.wanted_measures,
            continues=LostAttempt.of_attr(trial.user_attrs.get(CONTINUES_ATTR)),
        )
        if self.units.several:  # each seed and fold a run nested under the trial's
            context.units, context.continues = self.units, None
            if self.parent is not None:
                context.parent_run_id = self.parent.start_trial_run(trial, self.units)
                run_id = context.parent_run_id
                internals.set_user_attr(self.study, trial, RUN_ID_ATTR, run_id)
        executor.submit(trial, job_config, context)
        return trial.params

    @uninterrupted  # a stopping signal waits for the study's write in progress
    def _ask(self):
        """The next trial, or None once the study holds n_trials (counted across every
        process sharing it: the count and the ask happen under the study lock)."""
        with self.lock:
            # lost machines, seen at every ask
            studies.recover_stale_trials(self.study, self.max_retries, self.unclaimed_after)
            if studies.counted_trials(self.study) >= self.n_trials:
                return None
            with warnings.catch_warnings():  # heartbeats serve ask-and-tell sweeps as well
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = self.study.ask(fixed_distributions=self.space)
            internals.set_system_attr(self.study, trial, studies.WORKER_ATTR, studies.this_worker())
            return trial

    def _may_start(self) -> bool:
        """Whether a new trial may start: no stop condition met, the failure rate not
        exceeded (running trials finish either way)."""
        if self.failure_rate.exceeded(self.study):
            return False
        if self.stopped is None:
            self.stopped = self.stop.check(self.study)
            if self.stopped is not None:
                log.info("Stopping: %s. Running trials finish.", self.stopped.reason)
        return self.stopped is None

    @uninterrupted
    def _record(self, result: TrialResult):
        """Tell the study how a trial ended (once: a trial a lost heartbeat already failed
        is left as it is); the trial as it was before."""
        study = self.study
        trial = internals.trial_by_number(study, result.number)  # not the whole study
        if trial.state.is_finished():
            return trial
        if result.lost:  # its process ended without a result: FAIL, and queued once more
            with self.lock:
                studies.fail_and_retry(study, trial, result.lost, self.max_retries)
                if self.parent is not None:  # the run its job left RUNNING: KILLED
                    self.parent.close_orphans(study)
        elif result.state == COMPLETE:
            self._judge(trial)
            study.tell(result.number, result.value)
        else:
            if result.error:  # the failure-rate stop names the last failed trial's error
                internals.set_system_attr(study, trial, studies.ERROR_ATTR, result.error)
            if self.judge and result.state == PRUNED:  # Optuna's samplers read them too
                self.judge.set_on(study, trial)
            study.tell(result.number, state=studies.TrialState[result.state])
        if self.units.several and self.parent is not None and RUN_ID_ATTR in trial.user_attrs:
            self.parent.end_trial_run(trial.user_attrs[RUN_ID_ATTR], trial, result)
        return trial

    def _judge(self, trial) -> None:
        """A complete trial's constraints, set before the tell (a finished trial cannot be
        changed); SweepError for a task that does not record what they bound."""
        if self.judge is None:
            return
        missing = self.judge.missing(trial)
        if missing:
            message = constraining.missing_measures_message(
                trial.number, missing, trial.user_attrs.get(MEASURES_ATTR) or {}
            )
            internals.set_system_attr(self.study, trial, studies.ERROR_ATTR, message)
            self.study.tell(trial.number, state=studies.TrialState.FAIL)
            raise SweepError(message)
        feasible = self.judge.set_on(self.study, trial)
        if self.parent is not None and RUN_ID_ATTR in trial.user_attrs:
            self.parent.tag_trial_run(
                trial.user_attrs[RUN_ID_ATTR], "optuna.feasible", str(feasible).lower()
            )

    def _others_may_need_retries(self) -> bool:
        """With heartbeats, a process whose own budget is spent waits while trials of other
        processes run: if one of them goes silent (its machine died), this process fails it
        and runs its retry. Without heartbeats nothing tells a lost machine from a slow one."""
        if not self.waits_for_lost_peers or self.failure_rate.exceeded(self.study):
            return False
        running = self.study.get_trials(deepcopy=False, states=(studies.TrialState.RUNNING,))
        if not running:
            return False
        time.sleep(1.0)
        return True
