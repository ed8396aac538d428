"""Trials that train on several devices: each trial a torchrun process group.

With `hydra.sweeper.devices_per_trial=k` every trial is started as
`torchrun --standalone --nproc_per_node=k` (one rank per GPU, or k CPU processes with
gloo), up to `n_jobs` groups at once. The trial's configuration is composed here, before
its group starts, and handed to every rank in one file, so all ranks train the same
parameters; rank 0 reports to the trial and writes the trial's result next to that file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from experiment.sweep import context as sweep_context
from experiment.sweep.executors import (
    InFlight,
    TrialResult,
    task_reference,
)
from experiment.sweep.study import StudyLocation
from experiment.system import durable

RANK_ENTRY = "experiment.sweep.trial_rank"


@dataclass
class _Group:
    number: int
    process: subprocess.Popen
    payload_file: Path
    result_file: Path
    log_file: Path
    slot: int
    start: float = field(default_factory=time.perf_counter)


def _die_with_parent() -> None:
    """In the torchrun child: get SIGTERM when the sweep process dies, even by SIGKILL, so a
    killed sweep leaves no group training (torchrun then stops its ranks)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class GroupExecutor(InFlight):
    """n_jobs process groups of devices_per_trial ranks each, one trial per group."""

    def __init__(
        self,
        n_jobs: int,
        devices_per_trial: int,
        task_function,
        location: StudyLocation,
        pruner,
        work_dir: Path,
        gpus: int = 0,
    ):
        self.n_jobs, self.k, self.gpus = n_jobs, devices_per_trial, gpus
        self.task = task_reference(task_function)
        self.location, self.pruner = location, pruner
        self.work_dir = Path(work_dir) / ".trial_groups"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.threads = max(1, (os.cpu_count() or 1) // (n_jobs * devices_per_trial))
        self.running: list[_Group] = []

    def submit(self, trial, job_config: DictConfig, context) -> None:
        slot = min(set(range(self.n_jobs)) - {g.slot for g in self.running})
        stem = self.work_dir / f"trial_{trial.number}"
        payload_file, result_file = stem.with_suffix(".pkl"), stem.with_suffix(".result")
        log_file = stem.with_suffix(".log")
        result_file.unlink(missing_ok=True)
        payload = self.payload(trial, job_config, context, str(result_file))
        durable.write_bytes(payload_file, pickle.dumps(payload))
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={self.k}",
            "-m",
            RANK_ENTRY,
            str(payload_file),
        ]
        with open(log_file, "ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(slot),
                start_new_session=True,  # its own process group: stopped as a whole
                preexec_fn=_die_with_parent,
            )
        self.running.append(
            _Group(trial.number, process, payload_file, result_file, log_file, slot)
        )

    def prepare(self, study, lock) -> None:
        pass

    def _environment(self, slot: int) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(self.threads))
        if self.gpus:  # group `slot` takes its own k GPUs
            first = slot * self.k
            env["CUDA_VISIBLE_DEVICES"] = ",".join(
                str((first + i) % self.gpus) for i in range(self.k)
            )
        return env

    def next_result(self) -> TrialResult:
        while True:
            for group in self.running:
                code = group.process.poll()
                if code is not None:
                    self.running.remove(group)
                    return self._result(group, code)
            time.sleep(0.05)

    def _result(self, group: _Group, code: int) -> TrialResult:
        seconds = time.perf_counter() - group.start
        try:
            result = pickle.loads(group.result_file.read_bytes())
        except (OSError, EOFError, pickle.UnpicklingError):
            return TrialResult(
                group.number,
                sweep_context.FAIL,
                None,
                f"its process group exited with code {code} before rank 0 reported a "
                f"result (see {group.log_file})",
                seconds,
            )
        group.payload_file.unlink(missing_ok=True)
        group.result_file.unlink(missing_ok=True)
        result.seconds = seconds
        return result

    def close(self) -> None:
        for group in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group.process.pid, signal.SIGTERM)
        for group in self.running:
            try:
                group.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group.process.pid, signal.SIGKILL)
                group.process.wait()
        self.running.clear()
