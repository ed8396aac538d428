"""n_jobs long-lived worker processes, each running one trial job after another.

Workers are started once per sweep and take a new trial as soon as theirs ends; no
Python process is started per trial.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
import time
from multiprocessing.connection import wait

from hydra.core.utils import setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig

from experiment import sweep_context
from hydra_plugins.experiment_optuna_sweeper import optuna_internals as internals
from hydra_plugins.experiment_optuna_sweeper.executors import (
    TrialResult,
    execute,
    resolve_task,
    task_reference,
)
from hydra_plugins.experiment_optuna_sweeper.study import StudyLocation


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose sweep died (SIGKILL leaves no chance to stop it) ends itself."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def worker_main(conn, task_ref, location: StudyLocation, pruner, gpu, cpu_threads) -> None:
    # A spawned process makes spawn its default start method, so a trial's DataLoader would
    # spawn its workers too, each importing torch again (seconds per loader and epoch):
    # back to the platform's default, as in a run of its own.
    mp.set_start_method(None, force=True)
    if gpu is not None:  # pin before anything initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    with contextlib.suppress(ImportError):  # apps without torch need no thread setting
        import torch

        # K workers each using every core would thrash: share the cores between them.
        torch.set_num_threads(cpu_threads)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    import optuna

    setup_globals()  # Hydra's resolvers (${now:}, ${hydra:}) for the jobs' configs
    task_function = resolve_task(*task_ref)
    from hydra._internal.callbacks import Callbacks

    study = location.load(pruner)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        trial_id, job_config, context = message
        context.trial = optuna.Trial(study, trial_id)
        hydra_context = HydraContext(config_loader=None, callbacks=Callbacks(job_config))
        start = time.perf_counter()
        try:
            state, value, error = execute(hydra_context, task_function, job_config, context)
        except KeyboardInterrupt:  # the sweep ended this worker mid-trial (close())
            return
        conn.send(
            TrialResult(context.trial.number, state, value, error, time.perf_counter() - start)
        )


class WorkerPool:
    """n_jobs=K: K worker processes, each fed a new trial as soon as it finishes one."""

    def __init__(self, n_jobs: int, task_function, location: StudyLocation, pruner, gpus: int = 0):
        """`location`: the study, which each worker opens with its own connection."""
        self.mp = mp.get_context("spawn")  # CUDA cannot be used in forked children
        self.args = (task_reference(task_function), location, pruner)
        self.gpus = gpus
        self.cpu_threads = max(1, (os.cpu_count() or 1) // n_jobs)
        self.workers = [self._start(index) for index in range(n_jobs)]

    def _start(self, index: int) -> dict:
        parent_end, child_end = self.mp.Pipe()
        gpu = index % self.gpus if self.gpus else None  # round-robin over the GPUs
        # Not daemonic: a trial's DataLoader starts worker processes of its own, which a
        # daemonic process may not have. Stopped all the same: close() ends them, and a
        # worker whose sweep was killed ends itself (_exit_with_parent).
        process = self.mp.Process(
            target=worker_main,
            name=f"sweep-worker-{index}",
            daemon=False,
            args=(child_end, *self.args, gpu, self.cpu_threads),
        )
        process.start()
        child_end.close()
        return {"index": index, "process": process, "conn": parent_end, "trial": None, "start": 0.0}

    @property
    def free(self) -> int:
        return sum(1 for w in self.workers if w["trial"] is None and w["process"].is_alive())

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w["trial"] is not None)

    def submit(self, trial, job_config: DictConfig, context) -> None:
        worker = next(w for w in self.workers if w["trial"] is None and w["process"].is_alive())
        context.trial = None  # rebuilt in the worker from the shared storage
        worker["conn"].send((internals.trial_id(trial), job_config, context))
        worker["trial"], worker["start"] = trial.number, time.perf_counter()

    def next_result(self) -> TrialResult:
        busy = [w for w in self.workers if w["trial"] is not None]
        ready = wait([w["conn"] for w in busy] + [w["process"].sentinel for w in busy])
        for worker in busy:
            if worker["conn"] in ready and worker["conn"].poll():
                result = worker["conn"].recv()
                worker["trial"] = None
                return result
        for worker in busy:  # a worker died mid-trial (killed, out of memory, segfault)
            if worker["process"].sentinel in ready:
                number, code = worker["trial"], worker["process"].exitcode
                self.workers[self.workers.index(worker)] = self._start(worker["index"])
                return TrialResult(
                    number,
                    sweep_context.FAIL,
                    None,
                    f"worker process died (exit code {code})",
                    time.perf_counter() - worker["start"],
                )
        return self.next_result()

    def prepare(self, study, lock) -> None:
        pass

    def close(self) -> None:
        """End every worker: an idle one when told to, one still in a trial (the sweep
        stopped on an error or Ctrl-C) at once, by SIGTERM (the project's runs then mark
        their MLflow run KILLED; the next run of the sweep retries the trial); a worker that
        does not end is killed."""
        for worker in self.workers:
            if worker["trial"] is not None and worker["process"].is_alive():
                worker["process"].terminate()
            with contextlib.suppress(BrokenPipeError, OSError):
                worker["conn"].send(None)
        deadline = time.monotonic() + 30
        for worker in self.workers:
            worker["process"].join(timeout=max(0.0, deadline - time.monotonic()))
            if worker["process"].is_alive():
                worker["process"].kill()
                worker["process"].join(timeout=5)
