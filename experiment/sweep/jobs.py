"""Trials as submitit jobs: `hydra/launcher=submitit_slurm` (or `submitit_local`).

Each trial is one job, submitted with the launcher settings users know from
hydra-submitit-launcher (partition, timeout_min, gpus_per_node, ...). At most `n_jobs`
are queued or running; when any ends, the next trial is asked and submitted at once (no
batch barrier). Inside its job a trial reports to the shared study storage, so the
pruner stops it there and its allocation is freed. Each trial records its job's id and
folder, so a rerun of the sweep command re-attaches to jobs still queued or running and
collects their results instead of submitting them again. A job that ends without a
result (cancelled, timed out, its node lost) fails its trial with the job's state, and
the configuration is queued once more, as for a killed process, to continue from the
lost trial's checkpoint (on a disk the nodes share) in its MLflow run. A job warned by
SLURM before a time limit or a preemption (SIGUSR2) is requeued and continues its own
trial (`TrialJob`).
"""

from __future__ import annotations

import datetime
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf

from experiment.errors import SweepError
from experiment.sweep import context as sweep_context
from experiment.sweep import optuna_internals as internals
from experiment.sweep import slurm
from experiment.sweep import study as studies
from experiment.sweep.executors import (
    InFlight,
    TrialPayload,
    TrialResult,
    run_payload,
    task_reference,
)
from experiment.sweep.study import StudyLocation
from experiment.system import signals

log = logging.getLogger(__name__)
POLL_SECONDS = {"slurm": 2.0, "local": 0.5}  # the scheduler is asked once per poll
RESULT_GRACE_SECONDS = 15.0
# Launcher keys that are the executor's own (the others go to sbatch as slurm_<key>).
_BASE_KEYS = {
    "timeout_min",
    "cpus_per_task",
    "gpus_per_node",
    "tasks_per_node",
    "mem_gb",
    "nodes",
    "name",
    "stderr_to_stdout",
}
_NOT_PARAMETERS = {"_target_", "submitit_folder", "max_num_timeout", "array_parallelism"}


class TrialJob:
    """What a job runs: the trial, its MLflow run tagged with the job and its logs.

    Checkpointable, as submitit means it: on the signal SLURM sends ahead of a time limit
    or a preemption (SIGUSR2; `scancel --signal=USR2 JOB` sends it too) the trial stops
    at once, as on SIGTERM, never mid-write (its MLflow run KILLED, its last checkpoint on
    disk), and submitit requeues the job, which continues the same trial from that
    checkpoint in the same MLflow run. The trial stays RUNNING meanwhile."""

    def __call__(self, payload: TrialPayload) -> TrialResult:
        import submitit

        environment = submitit.JobEnvironment()
        preemption = environment._usr_sig()
        requeue = signal.getsignal(preemption)  # submitit's: checkpoint(), then requeue
        signals.stop_on(preemption)
        tags = {
            "submitit.job_id": str(environment.job_id),
            "submitit.stdout": str(environment.paths.stdout),
            "submitit.stderr": str(environment.paths.stderr),
        }
        try:
            return run_payload(payload, extra_tags=tags)
        except signals.Stopped as stop:
            if stop.signum != preemption or not callable(requeue):
                raise
            log.warning("Trial stopped by %s: its job is requeued to continue it", stop)
            requeue(preemption, None)  # exits the job without a result
            raise

    def checkpoint(self, payload: TrialPayload):
        """The requeued job's work: the same trial, continuing its own MLflow run from its
        last checkpoint (as its run recorded them on the trial)."""
        import submitit

        study = payload.location.load(payload.pruner)
        trial = internals.trial_by_id(study, payload.trial_id)
        payload.context.continues = studies.continuation_of(trial)
        payload.context.trial = None  # rebuilt in the requeued job, as in the first
        return submitit.helpers.DelayedSubmission(self, payload)


def storage_problem_seen_from_job(url: str, study_name: str) -> str | None:
    """Run in a job: None if the study's storage opens from where the job runs, else why
    not (a SQLite file on a disk the compute nodes do not share, a database host they
    cannot reach)."""
    import socket

    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            if not path.is_file():
                return f"the SQLite file {path} does not exist on {socket.gethostname()}"
        optuna.load_study(study_name=study_name, storage=url)
    except Exception as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return None


@dataclass
class _Job:
    number: int
    trial_id: int
    job: object  # a submitit Job
    start: float = field(default_factory=time.perf_counter)


class JobExecutor(InFlight):
    """n_jobs trials at a time, each a submitit job (SLURM, or local processes)."""

    def __init__(
        self,
        launcher: DictConfig,
        cluster: str,
        n_jobs: int,
        task_function,
        location: StudyLocation,
        pruner,
    ):
        import submitit

        settings = OmegaConf.to_container(launcher, resolve=True)
        self.cluster, self.n_jobs = cluster, n_jobs
        self.folder = settings["submitit_folder"]
        self.executor = submitit.AutoExecutor(
            folder=self.folder,
            cluster=cluster,
            **(
                {"slurm_max_num_timeout": settings["max_num_timeout"]} if cluster == "slurm" else {}
            ),
        )
        self.executor.update_parameters(
            **{
                key if key in _BASE_KEYS else f"{cluster}_{key}": value
                for key, value in settings.items()
                if key not in _NOT_PARAMETERS and (key in _BASE_KEYS or cluster == "slurm")
            }
        )
        self.task = task_reference(task_function)
        self.location, self.pruner = location, pruner
        self.running: list[_Job] = []

    def submit(self, trial, job_config: DictConfig, context) -> None:
        job = self.executor.submit(TrialJob(), self.payload(trial, job_config, context))
        record = {
            "job_id": str(job.job_id),
            "folder": str(job.paths.folder),
            "cluster": self.cluster,
        }
        internals.set_system_attr(trial.study, trial, studies.JOB_ATTR, record)
        self.running.append(_Job(trial.number, internals.trial_id(trial), job))
        log.info("Trial %d submitted as %s job %s", trial.number, self.cluster, job.job_id)

    def prepare(self, study: optuna.Study, lock) -> None:
        """Before any trial: the jobs reach the study's storage, and jobs a killed earlier
        run of this command left queued or running are this run's again."""
        self.check_jobs_reach_storage()
        with lock:
            self.attach(study)

    def check_jobs_reach_storage(self) -> None:
        """On SLURM: one small job opens the study's storage, so a storage the compute
        nodes cannot reach stops the sweep here, not trial by trial."""
        from submitit.core.utils import pickle_load

        if self.cluster != "slurm":
            return  # local jobs run where this process does
        url = self.location.storage_url
        job = self.executor.submit(storage_problem_seen_from_job, url, self.location.name)
        log.info("Checking that jobs reach the study's storage (slurm job %s)", job.job_id)
        while str(job.job_id) in slurm.queued_or_running([str(job.job_id)]):
            time.sleep(POLL_SECONDS["slurm"])
        path = job.paths.result_pickle
        deadline = time.time() + RESULT_GRACE_SECONDS
        while not path.exists() and time.time() < deadline:
            time.sleep(0.5)
        outcome, problem = pickle_load(path) if path.exists() else ("error", "no result")
        if outcome != "success" or problem is not None:
            raise SweepError(
                f"The sweep's jobs cannot use its study storage {studies.redact_storage(url)}: "
                f"{problem} (slurm job {job.job_id}, log {job.paths.stderr}). Use a storage "
                "every compute node reaches: PostgreSQL on a host they can connect to, or "
                "SQLite on a filesystem they share."
            )

    def attach(self, study: optuna.Study) -> int:
        """Take over the study's trials whose jobs a previous run of this sweep submitted
        and did not see end; the number taken over."""
        import submitit

        job_class = submitit.SlurmJob if self.cluster == "slurm" else submitit.LocalJob
        taken = 0
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            record = trial.system_attrs.get(studies.JOB_ATTR)
            if record is None or record.get("cluster") != self.cluster:
                continue
            if any(j.trial_id == internals.trial_id(trial) for j in self.running):
                continue
            job = job_class(folder=Path(record["folder"]), job_id=record["job_id"])
            age = (datetime.datetime.now() - trial.datetime_start).total_seconds()
            started = time.perf_counter() - age
            self.running.append(_Job(trial.number, internals.trial_id(trial), job, started))
            taken += 1
            log.info("Trial %d: re-attached to %s job %s", trial.number, self.cluster, job.job_id)
        return taken

    def next_result(self) -> TrialResult:
        while True:
            ended = self._ended_jobs()
            if ended:
                self.running.remove(ended[0])
                return self._result(ended[0])
            time.sleep(POLL_SECONDS[self.cluster])

    def _ended_jobs(self) -> list[_Job]:
        """SLURM: the jobs squeue no longer lists (one call for all; submitit's own check
        needs accounting, sacct, which many clusters and this project's test node lack).
        Local: a job this process started ends with its process; one re-attached to
        (another process's child) with its result, or with its process gone."""
        if self.cluster == "slurm":
            active = slurm.queued_or_running([str(e.job.job_id) for e in self.running])
            return [e for e in self.running if str(e.job.job_id) not in active]
        ended = []
        for entry in self.running:
            process = getattr(entry.job, "_process", None)
            if process is not None:
                done = process.poll() is not None
            else:
                done = not studies.pid_exists(int(entry.job.job_id))
            if done or entry.job.paths.result_pickle.exists():
                ended.append(entry)
        return ended

    def _result(self, entry: _Job) -> TrialResult:
        """The trial's result as its job pickled it; without one, a lost job: FAIL with the
        job's state (the sweeper queues the configuration once more)."""
        from submitit.core.utils import pickle_load

        seconds = time.perf_counter() - entry.start
        path = entry.job.paths.result_pickle
        deadline = time.time() + RESULT_GRACE_SECONDS  # a shared filesystem may lag
        while not path.exists() and time.time() < deadline and self._finished_ok(entry):
            time.sleep(0.5)
        if not path.exists():
            state = slurm.job_state(str(entry.job.job_id)) if self.cluster == "slurm" else "KILLED"
            reason = f"{self.cluster} job {entry.job.job_id} ended {state} without a result"
            log.warning("Trial %d: %s (its log: %s)", entry.number, reason, entry.job.paths.stderr)
            lost = f"{studies.JOB_LOST}: {reason}"
            return TrialResult(entry.number, sweep_context.FAIL, None, reason, seconds, lost=lost)
        outcome, payload = pickle_load(path)
        if outcome != "success":  # the job's own code raised outside the trial
            message = str(payload).strip().splitlines()[-1][:300]
            return TrialResult(entry.number, sweep_context.FAIL, None, message, seconds)
        payload.seconds = seconds
        return payload

    def _finished_ok(self, entry: _Job) -> bool:
        if self.cluster == "slurm":
            return slurm.job_state(str(entry.job.job_id)) == "COMPLETED"
        return False

    def close(self) -> None:
        if self.running:
            ids = ", ".join(str(j.job.job_id) for j in self.running)
            log.warning(
                "%d job(s) still queued or running (%s): they go on; the same sweep command "
                "re-attaches to them and collects their results (scancel stops them).",
                len(self.running),
                ids,
            )
