"""Does a cross-validated sweep pick a better configuration than a single-split one?

For each sweep seed: the default digits sweep (`hparams_search=optuna`) judged on the
single validation split, and the same sweep judged on 5 folds (`hydra.sweeper.folds=5`),
both with the same sampler seed and budget of configurations. Each sweep's best
configuration is then retrained as `experiment-promote --train-on-val` would (train +
val, the sweep's epochs, several seeds) and tested on the untouched test split. Prints,
per sweep seed, each pick's mean test accuracy, and how often the 5-fold pick beats,
ties or loses to the single-split pick.

    .venv/bin/python -m benchmarks.cross_validation [--sweep-seeds 5] [--trials 12]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

import optuna

from benchmarks._common import machine, run_cli

SWEPT = (
    "optimizer.lr",
    "dataset.batch_size",
    "regularization.dropout",
    "regularization.weight_decay",
)


def best_params(work: Path, seed: int, trials: int, epochs: int, folds: int) -> tuple[dict, float]:
    """The best configuration of one sweep, and the sweep's wall seconds."""
    storage, name = f"sqlite:///{work / 'optuna.db'}", f"cv{folds}-seed{seed}"
    wall, _ = run_cli(
        [
            "-m",
            "hparams_search=optuna",
            "tracking=none",
            f"trainer.epochs={epochs}",
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.seed={seed}",
            f"hydra.sweeper.folds={folds}",
            f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.study_name={name}",
        ],
        work,
    )
    return optuna.load_study(study_name=name, storage=storage).best_params, wall


def test_accuracy(work: Path, params: dict, epochs: int, retrain_seeds: int) -> float:
    """The mean test accuracy of `params` retrained on train + val over several seeds."""
    seeds = ",".join(str(s) for s in range(retrain_seeds))
    _, out = run_cli(
        [
            "-m",
            "tracking=none",
            "dataset.train_on_val=true",
            f"trainer.epochs={epochs}",
            f"trainer.seed={seeds}",
            *(f"{key}={params[key]}" for key in SWEPT),
        ],
        work,
    )
    values = [float(v) for v in re.findall(r"test/acc (\d\.\d+)", out)]
    assert len(values) == retrain_seeds, out[-2000:]
    return statistics.fmean(values)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweep-seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--retrain-seeds", type=int, default=3)
    args = parser.parse_args()
    print(
        f"default digits, {args.trials} configurations a sweep, {args.epochs} epochs, "
        f"{args.folds} folds; each pick retrained on train + val with {args.retrain_seeds} seeds"
    )
    outcome = {"beats": 0, "ties": 0, "loses": 0}
    walls = {"split": [], "folds": []}
    for seed in range(args.sweep_seeds):
        tests = {}
        for kind, folds in (("split", 1), ("folds", args.folds)):
            work = Path(tempfile.mkdtemp(prefix=f"bench-cv-{kind}-{seed}-"))
            params, wall = best_params(work, seed, args.trials, args.epochs, folds)
            walls[kind].append(wall)
            tests[kind] = test_accuracy(work, params, args.epochs, args.retrain_seeds)
        diff = tests["folds"] - tests["split"]
        verdict = "beats" if diff > 1e-9 else "loses" if diff < -1e-9 else "ties"
        outcome[verdict] += 1
        print(
            f"sweep seed {seed}: test/acc single-split pick {tests['split']:.4f}, "
            f"{args.folds}-fold pick {tests['folds']:.4f} ({diff:+.4f}: {verdict}); "
            f"sweep wall {walls['split'][-1]:.0f} s vs {walls['folds'][-1]:.0f} s"
        )
    print(f"machine: {machine()}")
    print(
        f"{args.folds}-fold pick beats the single-split pick in {outcome['beats']} of "
        f"{args.sweep_seeds} sweep seeds, ties {outcome['ties']}, loses {outcome['loses']}; "
        f"sweep wall time ratio folds / split: "
        f"{sum(walls['folds']) / sum(walls['split']):.2f}"
    )


if __name__ == "__main__":
    main()
