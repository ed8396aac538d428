"""n_jobs long-lived worker processes, each running one trial job after another.

Workers are started once per sweep, before the study is opened, and take a new trial as
soon as theirs ends; no Python process is started per trial. They start warm: forked
from the sweep's process, or from a fork server, after the modules a trial needs were
imported once (see `start_method`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import setup_globals
from hydra.types import HydraContext
from hydra.utils import get_method
from omegaconf import DictConfig, open_dict, read_write

from experiment.errors import SweepError
from experiment.sweep import context as sweep_context
from experiment.sweep import optuna_internals as internals
from experiment.sweep import study as studies
from experiment.sweep.executors import (
    TrialResult,
    execute,
    resolve_task,
    task_reference,
)
from experiment.sweep.study import StudyLocation

log = logging.getLogger(__name__)


def start_method(gpus: int) -> str:
    """How the workers start. `fork` on Linux where no GPU is used and this process runs
    one thread: a worker is ready in milliseconds with every module already imported.
    Otherwise `forkserver`: a fresh server process imports the preloaded modules once
    and forks each worker from itself (CUDA cannot be used in a process forked from one
    that touched it, and forking a process with other threads can copy a lock one of them
    holds). `spawn` where neither exists (Windows): each worker imports on its own."""
    methods = mp.get_all_start_methods()
    single_threaded = threading.active_count() == 1
    if not gpus and sys.platform == "linux" and "fork" in methods and single_threaded:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def import_modules(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # a module the runs may not need: theirs to report
            log.debug("preload of %s skipped: %s", name, err)


BEAT_SECONDS = 1.0  # how often a worker tells the sweep it is alive


def _beat_and_exit_with_parent(parent_pid: int, beat) -> None:
    """The worker's heartbeat (`beat`: shared memory the sweep reads; a stopped or hung
    process stops beating), and its end where its sweep died (SIGKILL leaves no chance
    to stop it)."""
    while True:
        beat.value = time.monotonic()
        time.sleep(BEAT_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


@dataclass
class WarmUp:
    """What the workers get ready with before their first trial: a job config (the task's
    config with the sweep's fixed overrides), modules to import, and the dotted paths of
    the functions of `hydra.sweeper.warm_up_function` and `preload_function`."""

    job_config: DictConfig | None = None
    preload: list[str] = field(default_factory=list)
    warm_up_function: str | None = None
    preload_function: str | None = None

    def in_worker(self) -> None:
        """In a worker, before its first trial. A failing warm-up costs time, not the
        sweep: the trials report what is wrong."""
        import_modules(self.preload)
        call_hook(self.warm_up_function, self.job_config)

    def before_fork(self) -> None:
        """In the sweep's process, before workers are forked from it: once for all
        workers (forked copies share the memory) instead of once in each."""
        import_modules(self.preload)
        call_hook(self.preload_function, self.job_config)


def call_hook(path: str | None, job_config: DictConfig | None) -> None:
    """The function at `path`, with the task's part of `job_config`."""
    if not path or job_config is None:
        return
    try:
        HydraConfig.instance().set_config(job_config)  # ${hydra:...} resolves
        task_config = copy.deepcopy(job_config)
        with read_write(task_config), open_dict(task_config):
            del task_config["hydra"]
        get_method(path)(task_config)
    except Exception as err:
        log.debug("%s of the sweep's task failed: %s", path, err)


def worker_main(
    conn, beat, task_ref, location: StudyLocation, pruner, gpu, cpu_threads, warm_up: WarmUp
) -> None:
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
    threading.Thread(
        target=_beat_and_exit_with_parent, args=(os.getppid(), beat), daemon=True
    ).start()
    import optuna

    setup_globals()  # Hydra's resolvers (${now:}, ${hydra:}) for the jobs' configs
    task_function = resolve_task(*task_ref)
    from hydra._internal.callbacks import Callbacks

    warm_up.in_worker()
    study = None  # opened at the first trial: the workers start before the study exists
    while True:
        try:
            message = conn.recv()
        except (EOFError, KeyboardInterrupt):  # the sweep ended (or stopped this worker)
            return
        if message is None:
            return
        trial_id, job_config, context = message
        study = study or location.load(pruner)
        context.trial = optuna.Trial(study, trial_id)
        hydra_context = HydraContext(config_loader=None, callbacks=Callbacks(job_config))
        start = time.perf_counter()
        try:
            state, value, error = execute(hydra_context, task_function, job_config, context)
        except KeyboardInterrupt:  # the sweep ended this worker mid-trial (close())
            return
        seconds = time.perf_counter() - start
        conn.send(TrialResult(context.trial.number, state, value, error, seconds))


@dataclass
class Worker:
    """A worker process of the pool, and what the sweep's process knows of it."""

    index: int  # its place in the pool (and its GPU, round-robin)
    process: BaseProcess
    conn: Connection  # the sweep's end of its pipe: trials out, results back
    beat: Any  # a shared double: time.monotonic() of its last heartbeat
    trial: int | None = None  # the number of the trial it runs; None while idle
    start: float = 0.0  # time.perf_counter() when its trial was handed over
    submitted: float = 0.0  # time.monotonic() then (the watchdog's clock)
    ran: bool = False  # it took a trial at least once
    silenced: str | None = None  # why the watchdog killed it


class WorkerPool:
    """n_jobs=K: K worker processes, each fed a new trial as soon as it finishes one.

    A worker lost mid-trial (killed, out of memory, or silent for `grace_seconds`: stopped
    or hung, then killed) is replaced, and its trial reported lost: the trial loop fails
    it and queues its configuration once more, to continue from its checkpoint."""

    def __init__(
        self,
        n_jobs: int,
        task_function,
        location: StudyLocation,
        pruner,
        gpus: int = 0,
        warm_up: WarmUp | None = None,
        grace_seconds: float = 60.0,
    ):
        """`location`: the study, which each worker opens with its own connection once
        it gets its first trial. `warm_up`: what the workers get ready with.
        `grace_seconds`: how long a worker in a trial may go without a heartbeat."""
        task = task_reference(task_function)
        warm_up = warm_up or WarmUp()
        if start_method(gpus) == "fork":  # every worker starts with what is imported here
            warm_up.before_fork()
        named = [task[0]] if task[0] != "pickle" and not task[0].startswith("file:") else []
        self.server_preload = [*warm_up.preload, __name__, *named]
        self.args = (task, location, pruner)
        self.warm_up = warm_up
        self.gpus = gpus
        self.grace_seconds = grace_seconds
        self.cpu_threads = max(1, (os.cpu_count() or 1) // n_jobs)
        self.workers = [self._start(index) for index in range(n_jobs)]
        self.closing = threading.Event()
        threading.Thread(target=self._watch, name="sweep-worker-watchdog", daemon=True).start()

    def _start(self, index: int) -> Worker:
        # Forked only while this process runs one thread (the first workers, started
        # before the watchdog): a replacement, forked later, could inherit a lock another
        # thread holds. It starts from the fork server instead (start_method).
        context = mp.get_context(start_method(self.gpus))
        if context.get_start_method() == "forkserver":  # the server imports these once
            context.set_forkserver_preload(self.server_preload)
        parent_end, child_end = context.Pipe()
        beat = context.Value("d", time.monotonic(), lock=False)
        gpu = index % self.gpus if self.gpus else None  # round-robin over the GPUs
        # Not daemonic: a trial's DataLoader starts worker processes of its own, which a
        # daemonic process may not have. Stopped all the same: close() ends them, and a
        # worker whose sweep was killed ends itself (_beat_and_exit_with_parent).
        process = context.Process(
            target=worker_main,
            name=f"sweep-worker-{index}",
            daemon=False,
            args=(child_end, beat, *self.args, gpu, self.cpu_threads, self.warm_up),
        )
        process.start()
        child_end.close()
        return Worker(index, process, parent_end, beat)

    @property
    def free(self) -> int:
        self._replace_idle_dead_workers()
        return sum(1 for w in self.workers if w.trial is None and w.process.is_alive())

    def _replace_idle_dead_workers(self) -> None:
        """A worker that died between trials (the out-of-memory killer, say) is replaced;
        one that died before its first trial could not start, and no other would."""
        for position, worker in enumerate(self.workers):
            if worker.trial is not None or worker.process.is_alive():
                continue
            if not worker.ran:
                raise SweepError(
                    f"A sweep worker process ended before its first trial (exit code "
                    f"{worker.process.exitcode}); its error is above. With n_jobs=1 the "
                    "trials run in the sweep's own process."
                )
            self.workers[position] = self._start(worker.index)

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w.trial is not None)

    def submit(self, trial, job_config: DictConfig, context) -> None:
        worker = next(w for w in self.workers if w.trial is None and w.process.is_alive())
        context.trial = None  # rebuilt in the worker from the shared storage
        worker.conn.send((internals.trial_id(trial), job_config, context))
        worker.submitted = time.monotonic()  # before "trial": the watchdog reads both
        worker.trial, worker.start, worker.ran = trial.number, time.perf_counter(), True

    def next_result(self) -> TrialResult:
        """The next trial to end: its result, or a lost one's (`TrialResult.lost`)."""
        while True:
            busy = [w for w in self.workers if w.trial is not None]
            ready = wait(
                [w.conn for w in busy] + [w.process.sentinel for w in busy],
                timeout=BEAT_SECONDS,
            )
            for worker in busy:
                if worker.conn in ready and worker.conn.poll():
                    try:
                        result = worker.conn.recv()
                    except (EOFError, OSError):  # it died while sending: its sentinel tells
                        continue
                    worker.trial = None
                    return result
            for worker in busy:
                if worker.process.sentinel in ready:  # killed, out of memory, segfault
                    worker.process.join(timeout=10)  # reaped: its exit code is known
                    if worker.silenced:  # by the watchdog
                        return self._lost(worker, studies.HEARTBEAT_LOST, worker.silenced)
                    code = worker.process.exitcode
                    return self._lost(worker, studies.KILLED, f"exit code {code}")

    def _watch(self) -> None:
        """The watchdog: a worker in a trial silent for the grace period (stopped, hung)
        is killed here, on a thread of its own, even while the sweep's thread waits on
        the storage (a stopped worker may hold a SQLite write lock: killing it frees it);
        next_result then reports its trial lost."""
        while not self.closing.wait(BEAT_SECONDS):
            for worker in list(self.workers):
                if worker.trial is None or worker.silenced:
                    continue
                silent = time.monotonic() - max(worker.beat.value, worker.submitted)
                if silent > self.grace_seconds:
                    worker.silenced = f"no heartbeat for {silent:.0f} s; killed"
                    with contextlib.suppress(OSError):
                        worker.process.kill()

    def _lost(self, worker: Worker, reason: str, detail: str) -> TrialResult:
        """The result of a trial whose worker was lost; a new worker in its place."""
        number, pid = worker.trial, worker.process.pid
        worker.conn.close()
        self.workers[self.workers.index(worker)] = self._start(worker.index)
        log.warning("Trial %d: its worker process %s was lost (%s)", number, pid, detail)
        return TrialResult(
            number,
            sweep_context.FAIL,
            None,
            f"worker process {pid} lost: {detail}",
            time.perf_counter() - worker.start,
            lost=f"{reason}: worker process {pid}, {detail}",
        )

    def prepare(self, study, lock) -> None:
        pass

    def close(self) -> None:
        """End every worker: an idle one when told to, one still in a trial (the sweep
        stopped on an error or Ctrl-C) at once, by SIGTERM (the project's runs then mark
        their MLflow run KILLED; the next run of the sweep continues the trial from its
        checkpoint); a worker that does not end is killed."""
        self.closing.set()
        for worker in self.workers:
            if worker.trial is not None and worker.process.is_alive():
                worker.process.terminate()
            with contextlib.suppress(BrokenPipeError, OSError):
                worker.conn.send(None)
        deadline = time.monotonic() + 30
        for worker in self.workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
