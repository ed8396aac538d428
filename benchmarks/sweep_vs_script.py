"""The project's sweep against the script a user would write by hand
(`benchmarks.plain_script`), on the same enqueued configurations, without pruning.

Both: the default digits CNN, `--epochs` epochs per trial, `--workers` processes sharing
an Optuna study in SQLite, one MLflow run per trial with its model. The two alternate for
`--rounds` rounds; each round's wall times and the ratio project / script are printed.
With `--phases` the project's sweep runs under `benchmarks.sweep_phases`' timers, and each
round prints its per-trial overhead too (a trial's job minus its training steps and
validation, median of the trials after each worker's first): both of the sweep's figures
from the same run. The timers' own cost (a line appended to a file per timed call) counts
against the project.

    .venv/bin/python -m benchmarks.sweep_vs_script [--trials 20] [--epochs 10] [--rounds 1]
                                                   [--workers 2] [--phases]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks._common import ROOT, TRAIN, machine, run_cli, store_args

SEARCH = """# @package _global_
defaults:
  - override /hydra/sweeper: experiment_optuna
hydra:
  mode: MULTIRUN
  sweeper:
    warm_up_function: experiment.training.run.warm_up_sweep_worker
    preload_function: experiment.training.run.preload_sweep_workers
    params:
      optimizer.lr: tag(log, interval(1e-4, 1e-1))
      dataset.batch_size: choice(32, 64, 128, 256)
      regularization.dropout: interval(0.0, 0.5)
      regularization.weight_decay: tag(log, interval(1e-6, 1e-2))
tracking:
  model_format: pickle
"""


def configurations(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "optimizer.lr": 10 ** rng.uniform(-4, -1),
            "dataset.batch_size": rng.choice([32, 64, 128, 256]),
            "regularization.dropout": rng.uniform(0.0, 0.5),
            "regularization.weight_decay": 10 ** rng.uniform(-6, -2),
        }
        for _ in range(count)
    ]


def project(
    work: Path, configs: list[dict], epochs: int, workers: int, program=TRAIN, extra=()
) -> float:
    """The project's sweep (`program`: the CLI's module, `extra`: more overrides)."""
    conf = work / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    search = yaml.safe_load(SEARCH.split("\n", 1)[1])
    search["hydra"]["sweeper"]["enqueue_trials"] = configs
    (conf / "bench.yaml").write_text("# @package _global_\n" + yaml.safe_dump(search))
    seconds, _ = run_cli(
        [
            "--config-dir",
            str(work / "conf"),
            "-m",
            "hparams_search=bench",
            f"hydra.sweeper.n_trials={len(configs)}",
            f"hydra.sweeper.n_jobs={workers}",
            "hydra.sweeper.pruner=none",
            f"hydra.sweeper.storage=sqlite:///{work / 'optuna.db'}",
            f"hydra.sweep.dir={work / 'multirun'}",
            f"trainer.epochs={epochs}",
            "regularization.early_stopping.patience=null",
            "trainer.progress=quiet",
            *store_args(work),
            *extra,
        ],
        ROOT,  # every path above is absolute
        program,
    )
    return seconds


def script(work: Path, configs: list[dict], epochs: int, workers: int) -> float:
    storage = f"sqlite:///{work / 'optuna.db'}"
    (work / "configs.json").write_text(json.dumps(configs))
    start = time.perf_counter()  # from the command's start, as for the project
    command = [sys.executable, "-m", "benchmarks.plain_script", storage, "plain"]
    command += [f"sqlite:///{work / 'mlflow.db'}", str(epochs), str(workers)]
    command.append(str(work / "configs.json"))
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def completed_trials(work: Path) -> int:
    """COMPLETE trials in the run's study: each side must have run every configuration."""
    import optuna

    storage = f"sqlite:///{work / 'optuna.db'}"
    summaries = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    return len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))


def timed_project(work: Path, configs: list[dict], epochs: int, workers: int) -> float:
    """`project`, its processes timed per phase by benchmarks.sweep_phases (their records
    in work/phases)."""
    from benchmarks import sweep_phases

    folder = work / "phases"
    folder.mkdir()
    os.environ[sweep_phases.LOG_FOLDER] = str(folder)
    try:
        return project(
            work, configs, epochs, workers, program=["-m", "benchmarks.sweep_phases", "--child"]
        )
    finally:
        del os.environ[sweep_phases.LOG_FOLDER]


def steady_overhead(work: Path) -> float:
    from benchmarks import sweep_phases

    _, workers = sweep_phases.coordinator_and_workers(sweep_phases.read(work / "phases"))
    return sweep_phases.steady_overhead(workers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--phases", action="store_true", help="also the project's per-trial overhead"
    )
    args = parser.parse_args()
    configs = configurations(args.trials)
    ratios, overheads = [], []
    print(f"machine: {machine()}")
    for index in range(args.rounds):
        times = {}
        sides = (("project", timed_project if args.phases else project), ("script", script))
        for name, runner in sides:
            work = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
            times[name] = runner(work, configs, args.epochs, args.workers)
            if completed_trials(work) != len(configs):
                raise SystemExit(f"{name}: {completed_trials(work)} of {len(configs)} complete")
            if name == "project" and args.phases:
                overheads.append(steady_overhead(work))
        ratios.append(times["project"] / times["script"])
        overhead = f"; per-trial overhead {overheads[-1]:.3f} s" if args.phases else ""
        print(
            f"round {index + 1}: project {times['project']:.1f} s, plain script "
            f"{times['script']:.1f} s for {args.trials} trials x {args.epochs} epochs, "
            f"{args.workers} workers; ratio project / script {ratios[-1]:.2f}{overhead}"
        )
    print(f"median ratio project / script: {statistics.median(ratios):.2f}")
    if overheads:
        print(f"median per-trial overhead of the project: {statistics.median(overheads):.3f} s")


if __name__ == "__main__":
    main()
