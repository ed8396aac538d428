"""What pruning saves: the same seeded sweep with `pruner=median` and `pruner=none`.

Prints total epochs trained, wall time and best val/acc for each, and the ratios.

    .venv/bin/python -m benchmarks.pruning [--trials 20]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import optuna

from benchmarks._common import machine, run_cli, store_args


def sweep(work: Path, pruner: str, trials: int) -> dict:
    storage = f"sqlite:///{work / 'optuna.db'}"
    wall, _ = run_cli(
        [
            "-m",
            "hparams_search=optuna",
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweeper.pruner={pruner}",
            f"hydra.sweeper.storage={storage}",
            f"hydra.sweeper.study_name=pruning-{pruner}",
            *store_args(work),
        ],
        work,
    )
    study = optuna.load_study(study_name=f"pruning-{pruner}", storage=storage)
    return {
        "wall": wall,
        # Time inside trials: the wall time less process start, study set-up and plots.
        "in_trials": sum(
            (t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials
        ),
        "epochs": sum(len(t.intermediate_values) for t in study.trials),
        "best": study.best_value,
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    results = {}
    for pruner in ("none", "median"):
        work = Path(tempfile.mkdtemp(prefix=f"bench-pruning-{pruner}-"))
        results[pruner] = sweep(work, pruner, args.trials)
        r = results[pruner]
        print(
            f"pruner={pruner:6s} epochs {r['epochs']:4d}  wall {r['wall']:6.1f} s  "
            f"best val/acc {r['best']:.4f}  pruned trials {r['pruned']}"
        )
    on, off = results["median"], results["none"]
    print(f"machine: {machine()}")
    print(
        f"epochs with/without pruning: {on['epochs'] / off['epochs']:.2f}; "
        f"wall time: {on['wall'] / off['wall']:.2f}; best val/acc difference: "
        f"{on['best'] - off['best']:+.4f}"
    )


if __name__ == "__main__":
    main()
