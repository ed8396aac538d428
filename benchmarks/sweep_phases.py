"""Where a parallel sweep's time goes: each phase of a trial (in its worker) and of the
sweep (in its coordinator), timed inside the real CLI's processes.

    .venv/bin/python -m benchmarks.sweep_phases [--trials 20] [--epochs 10] [--workers 2]
                                                [HYDRA_OVERRIDE ...]

The sweep is the one of `benchmarks.sweep_vs_script` (the same enqueued configurations,
no pruning, every trial logged to MLflow with its model). The CLI runs as
`python -m benchmarks.sweep_phases --child ...`: this module wraps the phases' functions
with timers and then calls the CLI's own entry point. Worker processes import the parent's
main module again (multiprocessing does so for spawn and forkserver), so the timers are in
them too. Each timed call appends one JSON line to a file of its process; the report reads
them all.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

LOG_FOLDER = "SWEEP_PHASES_LOG"
PROFILE = "SWEEP_PHASES_PROFILE"

PLUGIN = "experiment.sweep"
# (label, owner module, attribute path): the phases of a trial, in the order they run.
TRIAL_PHASES = [
    ("trial job (Hydra's run_job)", f"{PLUGIN}.executors", "run_job"),
    ("  the job's logging configured", "hydra.core.utils", "configure_log"),
    ("  .hydra/*.yaml written", "hydra.core.utils", "_save_config"),
    ("  config entered and checked", "experiment.config.run_config", "RunConfig.enter"),
    ("  MLflow tracker opened", "experiment.training.run", "build_tracker"),
    ("  data, model, optimizer built", "experiment.training.run", "build_parts"),
    (
        "  the run's record (name, params, tags, git commit)",
        "experiment.training.run",
        "run_record",
    ),
    (
        "  MLflow run started (params, tags, config files)",
        "experiment.tracking.tracker",
        "Tracker.start",
    ),
    (
        "  the dataset logged as the run's input",
        "experiment.tracking.tracker",
        "Tracker.log_dataset",
    ),
    ("  epochs (fit, with their callbacks)", "experiment.training.run", "fit"),
    ("    epochs seeded", "experiment.training.engine", "seed_epoch"),
    ("    training steps", "experiment.training.engine", "train_one_epoch"),
    ("    validation", "experiment.training.engine", "evaluate"),
    (
        "    checkpoints (last.pt, best.pt)",
        "experiment.training.callbacks",
        "Checkpointer.__call__",
    ),
    ("      of which fsync", "experiment.system.durable", "fsync_file"),
    ("    epoch metrics to MLflow", "experiment.tracking.tracker", "Tracker.log_epoch"),
    ("    report to the trial (pruning)", "experiment.sweep.context", "report"),
    ("  test evaluation of best.pt", "experiment.training.run", "evaluate_best"),
    ("  summary metrics to MLflow", "experiment.tracking.tracker", "Tracker.log_metrics"),
    (
        "  plots drawn and logged",
        "experiment.tracking.run_figures",
        "RunFigures.log",
    ),
    ("  model logged", "experiment.tracking.tracker", "Tracker.log_model"),
    ("  MLflow run ended", "experiment.tracking.tracker", "Tracker.finish"),
]
GC = "  garbage collection, all through the job"
# Addressed through the engine's module, where the sweeper looks them up.
SWEEPER = f"{PLUGIN}.sweeper"
SWEEP_PHASES = [
    ("sweep", SWEEPER, "SweepEngine.sweep"),
    ("study, sampler, parent run", SWEEPER, "SweepEngine._open_study"),
    ("  of which the Optuna study", SWEEPER, "studies.load_or_create"),
    ("  of which the MLflow parent run", SWEEPER, "reporting.ParentRun.__init__"),
    ("workers started", SWEEPER, "SweepEngine._executor"),
    ("ask (per trial)", SWEEPER, "TrialLoop._ask"),
    ("compose the trial's config (per trial)", SWEEPER, "SweepEngine._job_config"),
    ("tell (per trial)", SWEEPER, "TrialLoop._record"),
    ("end: results file and parent run", SWEEPER, "SweepEngine._finish"),
    ("  of which study plots", SWEEPER, "reporting.study_plots"),
    ("end: summary table", SWEEPER, "SweepEngine._report"),
    ("workers stopped", SWEEPER, "WorkerPool.close"),
]


def _process_age() -> float:
    """Seconds since this process started (Linux), so start-up before Python counts."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class _Recorder:
    """One file per process; a forked worker starts its own at the fork."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.write({"event": "process", "at": time.time() - _process_age()})
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.write({"event": "process", "at": time.time()})

    def write(self, record: dict) -> None:
        with open(self.folder / f"{os.getpid()}.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")

    def timed(self, label: str, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.time()
            try:
                return function(*args, **kwargs)
            finally:
                self.write({"event": label, "at": start, "seconds": time.time() - start})

        return wrapper

    def collecting(self, label: str, function):
        """`function` (a trial's job), recording the seconds Python's garbage collector
        ran during it as one `label` event."""
        import gc

        started, spent = [0.0], [0.0]

        def clock(phase, _info):
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                spent[0] += time.perf_counter() - started[0]

        gc.callbacks.append(clock)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start, spent[0] = time.time(), 0.0
            try:
                return function(*args, **kwargs)
            finally:
                self.write({"event": label, "at": start, "seconds": spent[0]})

        return wrapper

    def profiled(self, function):
        """A worker's trial jobs under cProfile (its first job left out: imports), the
        statistics of all later jobs of the process in one file, rewritten after each."""
        import cProfile

        profile = cProfile.Profile()
        calls = 0

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == 1:
                return function(*args, **kwargs)
            try:
                return profile.runcall(function, *args, **kwargs)
            finally:
                profile.dump_stats(self.folder / f"{os.getpid()}.prof")

        return wrapper


def _wrap(recorder: _Recorder, phases) -> None:
    for label, module_name, attribute in phases:
        try:
            owner = importlib.import_module(module_name)
        except ImportError:
            continue
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        if hasattr(owner, name):
            setattr(owner, name, recorder.timed(label, getattr(owner, name)))


def _install() -> None:
    """In every process of the timed CLI: wrap the phases (the modules are imported
    here, which is what the processes would import anyway)."""
    recorder = _Recorder(os.environ[LOG_FOLDER])
    _wrap(recorder, TRIAL_PHASES + SWEEP_PHASES)
    executors = importlib.import_module(f"{PLUGIN}.executors")
    executors.run_job = recorder.collecting(GC, executors.run_job)
    if os.environ.get(PROFILE):
        executors.run_job = recorder.profiled(executors.run_job)


if os.environ.get(LOG_FOLDER):
    _install()


def child(arguments: list[str]) -> None:
    from experiment import train

    sys.argv = ["experiment.train", *arguments]
    train.cli()


def read(folder: Path) -> dict[int, list[dict]]:
    records = {}
    for path in folder.glob("*.jsonl"):
        records[int(path.stem)] = [json.loads(line) for line in path.read_text().splitlines()]
    return records


JOB = TRIAL_PHASES[0][0]


def coordinator_and_workers(records: dict[int, list[dict]]) -> tuple[int, dict[int, list]]:
    """The sweep's process id and the workers' records (the processes that ran jobs)."""
    coordinator = next(pid for pid, r in records.items() if any(e["event"] == "sweep" for e in r))
    workers = {
        pid: r
        for pid, r in records.items()
        if pid != coordinator and any(e["event"] == JOB for e in r)
    }
    return coordinator, workers


def report(records: dict[int, list[dict]], wall: float, trials: int) -> None:
    coordinator, workers = coordinator_and_workers(records)
    print(f"\nsweep wall time {wall:.1f} s for {trials} trials, {len(workers)} workers")
    report_sweep(records[coordinator], workers)
    for pid, events in records.items():  # the figure process, say
        if pid != coordinator and pid not in workers and len(events) > 1:
            report_helper(pid, events[1:])
    report_trials(workers)


def totals(events: list[dict]) -> dict[str, list[float]]:
    """Each event's label -> the seconds of its calls."""
    seconds = defaultdict(list)
    for event in events:
        seconds[event["event"]].append(event["seconds"])
    return seconds


def total_line(label: str, values: list[float]) -> str:
    each = f" ({statistics.mean(values):.3f} each x {len(values)})" if len(values) > 1 else ""
    return f"  {label}: {sum(values):6.2f}{each}"


def report_helper(pid: int, events: list[dict]) -> None:
    print(f"\nanother process of the sweep ({pid}), seconds:")
    for label, values in totals(events).items():
        print(total_line(label.strip(), values))


def report_sweep(events: list[dict], workers: dict[int, list[dict]]) -> None:
    start = events[0]["at"]
    sweep = next(e for e in events if e["event"] == "sweep")
    print("\nthe sweep (coordinator process), seconds:")
    print(f"  imports and Hydra's composition before the sweep: {sweep['at'] - start:6.2f}")
    seconds = totals(events[1:])
    for label, *_ in SWEEP_PHASES:
        print(total_line(label, seconds.get(label, [])))
    for pid, worker in sorted(workers.items()):
        first = min(e["at"] for e in worker if e["event"] == JOB)
        print(
            f"  worker {pid}: started at {worker[0]['at'] - start:5.2f}, "
            f"first trial at {first - start:5.2f}"
        )
    last = max(e["at"] + e["seconds"] for w in workers.values() for e in w if e["event"] == JOB)
    end = sweep["at"] + sweep["seconds"]
    print(f"  last trial ended at {last - start:6.2f}; the sweep ended at {end - start:6.2f}")


def per_trial(worker: list[dict]) -> list[dict[str, float]]:
    """Each trial of a worker: seconds per phase (the phases inside its job)."""
    jobs = sorted((e for e in worker if e["event"] == JOB), key=lambda e: e["at"])
    trials = []
    for job in jobs:
        phases = defaultdict(float, {JOB: job["seconds"]})
        inside = (e for e in worker[1:] if job["at"] <= e["at"] <= job["at"] + job["seconds"])
        for event in inside:
            if event["event"] != JOB:
                phases[event["event"]] += event["seconds"]
        trials.append(phases)
    return trials


def report_trials(workers: dict[int, list[dict]]) -> None:
    trials = [per_trial(worker) for worker in workers.values()]
    firsts = [t[0] for t in trials]
    steady = [trial for t in trials for trial in t[1:]]
    print("\nper trial (in its worker), mean seconds; steady: each worker's first trial left out")
    print(f"  {'phase':<52} {'first':>7} {'steady':>7}")
    for label in [label for label, *_ in TRIAL_PHASES] + [GC]:
        first = statistics.mean(t.get(label, 0.0) for t in firsts)
        later = statistics.mean(t.get(label, 0.0) for t in steady) if steady else float("nan")
        print(f"  {label:<52} {first:7.3f} {later:7.3f}")
    gaps = []
    for worker in workers.values():
        jobs = sorted((e for e in worker if e["event"] == JOB), key=lambda e: e["at"])
        gaps += [b["at"] - a["at"] - a["seconds"] for a, b in zip(jobs, jobs[1:], strict=False)]
    if gaps:
        print(
            "  a worker's wait between trials (the sweep telling, asking, composing): "
            f"median {statistics.median(gaps):.3f} s"
        )
    print(
        "\n  steady overhead per trial (its job minus training steps and validation): "
        f"median {overhead(steady):.3f} s"
    )


def steady_overhead(workers: dict[int, list[dict]]) -> float:
    """`overhead` of the trials after each worker's first."""
    return overhead([trial for worker in workers.values() for trial in per_trial(worker)[1:]])


def overhead(steady: list[dict[str, float]]) -> float:
    """The median over `steady` (trials' phases) of a trial's job minus its training
    steps and validation: what the project adds to the training per trial."""
    training = ("    training steps", "    validation")
    overheads = [t[JOB] - sum(t.get(k, 0.0) for k in training) for t in steady]
    return statistics.median(overheads) if overheads else float("nan")


def print_profile(folder: Path, lines: int = 60) -> None:
    import pstats

    files = [str(path) for path in folder.glob("*.prof")]
    if not files:
        print("\nno worker ran more than one trial: nothing profiled")
        return
    print(f"\nthe workers' later trial jobs under cProfile ({len(files)} workers):")
    pstats.Stats(*files).sort_stats("cumulative").print_stats(lines)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    from benchmarks import sweep_vs_script

    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the workers' trial jobs (cProfile; the phases' times then include "
        "the profiler's cost) and print the functions that took the most cumulative time",
    )
    args, overrides = parser.parse_known_args()
    work = Path(tempfile.mkdtemp(prefix="bench-phases-"))
    folder = work / "phases"
    folder.mkdir()
    os.environ[LOG_FOLDER] = str(folder)
    if args.profile:
        os.environ[PROFILE] = "1"
    seconds = sweep_vs_script.project(
        work,
        sweep_vs_script.configurations(args.trials),
        args.epochs,
        args.workers,
        program=["-m", "benchmarks.sweep_phases", "--child"],
        extra=overrides,
    )
    report(read(folder), seconds, args.trials)
    if args.profile:
        print_profile(folder)


if __name__ == "__main__":
    main()
