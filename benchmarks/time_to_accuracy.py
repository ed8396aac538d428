"""Seconds of training until the default run (cnn on digits) reaches val/acc >= 0.97.

Reads the per-epoch `val/acc` and `epoch_time_s` the run logged to MLflow; the time is
the sum of epoch times up to and including the first epoch at or above the target.

    .venv/bin/python -m benchmarks.time_to_accuracy [--seeds 3] [--target 0.97]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from benchmarks._common import machine, run_cli, store_args


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("overrides", nargs="*", help="extra config overrides")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-tta-"))
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    results = []
    for seed in range(args.seeds):
        run_cli(
            [
                *store_args(work),
                f"trainer.seed={seed}",
                f"run_name=seed{seed}",
                "tracking.log_model=false",
                *args.overrides,
            ],
            work,
        )
        (run,) = client.search_runs(["1"], filter_string=f"attributes.run_name = 'seed{seed}'")
        history = {
            m: sorted(client.get_metric_history(run.info.run_id, m), key=lambda x: x.step)
            for m in ("val/acc", "epoch_time_s")
        }
        elapsed = 0.0
        for acc, seconds in zip(history["val/acc"], history["epoch_time_s"], strict=True):
            elapsed += seconds.value
            if acc.value >= args.target:
                results.append((elapsed, acc.step + 1, run.data.metrics["test/acc"]))
                break
        else:
            results.append((float("inf"), None, run.data.metrics["test/acc"]))
        print(
            f"seed {seed}: {results[-1][0]:.2f} s to val/acc >= {args.target} "
            f"(epoch {results[-1][1]}); final test/acc {results[-1][2]:.4f}"
        )
    print(f"machine: {machine()}")
    print(
        f"median {statistics.median(r[0] for r in results):.2f} s of training to "
        f"val/acc >= {args.target} over {args.seeds} seeds"
    )


if __name__ == "__main__":
    main()
