"""Trials per hour on one GPU with 1, 2 and 4 parallel workers (`hydra.sweeper.n_jobs`).

A short synthetic trial (MNIST-shaped, few epochs) is small enough that one trial leaves
the GPU idle much of the time; several workers fill it. Prints trials/hour per K and the
best K's ratio over K=1. Needs CUDA; `--allow-cpu` runs it anyway (2 CPU cores share the
same cores, so no gain is expected there).

    .venv/bin/python -m benchmarks.trials_per_hour [--trials 16] [--jobs 1 2 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks._common import machine, run_cli, store_args

TRIAL = [
    "dataset=synthetic",
    "dataset.source.num_train=20000",
    "dataset.source.num_test=2000",
    "trainer.epochs=3",
    "regularization.early_stopping.patience=null",
    "hydra.sweeper.pruner=none",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--allow-cpu", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("No GPU here: run on a CUDA machine, or pass --allow-cpu.")
    rates = {}
    for jobs in args.jobs:
        work = Path(tempfile.mkdtemp(prefix=f"bench-tph-{jobs}-"))
        wall, _ = run_cli(
            [
                "-m",
                "hparams_search=optuna",
                *TRIAL,
                f"hydra.sweeper.n_jobs={jobs}",
                f"hydra.sweeper.n_trials={args.trials}",
                f"hydra.sweeper.storage=sqlite:///{work / 'optuna.db'}",
                *store_args(work),
            ],
            work,
        )
        rates[jobs] = args.trials / wall * 3600
        print(
            f"n_jobs={jobs}: {args.trials} trials in {wall:.1f} s = {rates[jobs]:,.0f} trials/hour"
        )
    best = max(rates, key=rates.get)
    print(f"machine: {machine()}")
    print(
        f"best n_jobs={best}: {rates[best] / rates[args.jobs[0]]:.2f}x trials/hour over "
        f"n_jobs={args.jobs[0]}"
    )


if __name__ == "__main__":
    main()
