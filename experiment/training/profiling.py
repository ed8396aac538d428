"""`trainer.profile_steps=N` (debug=profile): torch.profiler over N training steps.

The first step is a warm-up (lazy initialisation, allocator growth, kernel selection) and
is not recorded; the next N are, across epochs if an epoch has fewer batches. What comes
out, in `<run folder>/profile/` and the MLflow run's `profile/` artifacts:

- `trace.json`: the Chrome trace of the recorded steps; open it at https://ui.perfetto.dev
  (or chrome://tracing);
- `key_averages.txt`: the operators ranked by their own time on the device that trained.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("experiment")

TRACE, TABLE = "trace.json", "key_averages.txt"
WARM_UP_STEPS = 1
TABLE_ROWS = 30


class StepProfiler:
    """A context over the training loop; `step()` after each training batch. The
    files are written when the recorded steps are done or, at the latest, on exit."""

    def __init__(self, steps: int, folder: Path, device: torch.device):
        from torch.profiler import ProfilerActivity, profile, schedule

        self.steps, self.folder, self.device = steps, Path(folder), device
        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=0, warmup=WARM_UP_STEPS, active=steps, repeat=1),
            on_trace_ready=self._write,
            record_shapes=True,
        )
        self.taken, self.written = 0, False

    def __enter__(self) -> StepProfiler:
        self.profiler.start()
        return self

    def step(self) -> None:
        if self.taken < WARM_UP_STEPS + self.steps:  # past the schedule: nothing to do
            self.taken += 1
            self.profiler.step()

    def __exit__(self, *exc) -> None:
        self.profiler.stop()  # a recording cut short by the end of training is written
        if exc[0] is None and not self.written:
            log.warning(
                "trainer.profile_steps: the run trained %s step(s), none after the warm-up "
                "step: nothing was profiled. Train more batches (trainer.epochs, "
                "trainer.limit_batches).",
                self.taken,
            )

    def _write(self, profiler) -> None:
        recorded = self.taken - WARM_UP_STEPS
        if recorded <= 0:  # stopped right after the warm-up: no step recorded
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(self.folder / TRACE))
        sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=TABLE_ROWS)
        (self.folder / TABLE).write_text(table + "\n")
        self.written = True
        log.info(
            "Profiled %s training step(s): %s (open it at https://ui.perfetto.dev) and %s",
            recorded,
            self.folder / TRACE,
            self.folder / TABLE,
        )


def profiler_of_run(steps: int | None, folder: Path, device: torch.device):
    """A StepProfiler, or None where trainer.profile_steps is null."""
    return None if steps is None else StepProfiler(steps, folder, device)
