"""Per-trial overhead of a sweep: a trial's wall time minus its training time.

Runs a 20-trial sweep of the default digits run (one process, trials in it) and, as the
reference, single runs each started as a new process (what a launcher that spawns a
process per trial pays). Prints the medians and their ratio.

    .venv/bin/python -m benchmarks.sweep_overhead [--trials 20] [--reference-runs 3] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import optuna
from mlflow import MlflowClient

from benchmarks._common import machine, run_cli, store_args


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--reference-runs", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="extra overrides for the sweep's trials")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    storage = f"sqlite:///{work / 'optuna.db'}"
    wall, _ = run_cli(
        [
            "-m",
            "hparams_search=optuna",
            f"hydra.sweeper.n_trials={args.trials}",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=overhead",
            *store_args(work),
            *args.overrides,
        ],
        work,
    )
    study = optuna.load_study(study_name="overhead", storage=storage)
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    runs = {r.data.tags.get("optuna.trial"): r for r in client.search_runs(["1"], max_results=500)}
    overheads, trained = [], []
    for trial in study.trials:
        run = runs.get(str(trial.number))
        if run is None or "train_time_s" not in run.data.metrics:
            continue  # pruned/failed trials log no training total
        duration = (trial.datetime_complete - trial.datetime_start).total_seconds()
        overheads.append(duration - run.data.metrics["train_time_s"])
        trained.append(run.data.metrics["train_time_s"])

    # The reference: the same run, one new process each, into the same (existing) store.
    reference = []
    for i in range(args.reference_runs):
        seconds, _ = run_cli([*store_args(work), f"trainer.seed={i}", f"run_name=single-{i}"], work)
        (run,) = client.search_runs(["1"], filter_string=f"attributes.run_name = 'single-{i}'")
        reference.append(seconds - run.data.metrics["train_time_s"])

    in_process = statistics.median(overheads)
    per_process = statistics.median(reference)
    print(f"machine: {machine()}")
    print(
        f"sweep: {args.trials} trials in {wall:.1f} s wall; {len(overheads)} completed trials "
        f"measured; median training {statistics.median(trained):.2f} s per trial"
    )
    print(
        f"per-trial overhead, trials in one process: median {in_process:.3f} s "
        f"(min {min(overheads):.3f}, max {max(overheads):.3f})"
    )
    print(f"per-trial overhead, a new process per run (reference): median {per_process:.3f} s")
    print(f"ratio reference / ours: {per_process / in_process:.1f}x")


if __name__ == "__main__":
    main()
