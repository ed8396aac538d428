"""Peak memory: host RSS of the default run and of a 4-worker sweep's workers, and GPU
memory per trial where there is a GPU (it should stay flat from trial to trial).

Each run logs `peak_rss_mb` (and `peak_gpu_mem_mb` on CUDA) to MLflow; this script reads
them back, and the largest RSS of any process it started.

    .venv/bin/python -m benchmarks.memory [--workers 4] [--trials 8]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from benchmarks._common import machine, run_cli, store_args


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")

    run_cli([*store_args(work), "run_name=default"], work)
    (single,) = client.search_runs(["1"], filter_string="attributes.run_name = 'default'")
    largest_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"default run: peak RSS {single.data.metrics['peak_rss_mb']:.0f} MB "
        f"(process high-water mark {largest_child:.0f} MB)"
        + (
            f", peak GPU {single.data.metrics['peak_gpu_mem_mb']:.0f} MB"
            if "peak_gpu_mem_mb" in single.data.metrics
            else ""
        )
    )

    run_cli(
        [
            "-m",
            "hparams_search=optuna",
            f"hydra.sweeper.n_jobs={args.workers}",
            f"hydra.sweeper.n_trials={args.trials}",
            "hydra.sweeper.study_name=memory",
            f"hydra.sweeper.storage=sqlite:///{work / 'optuna.db'}",
            *store_args(work),
        ],
        work,
    )
    trials = client.search_runs(["1"], filter_string="tags.`optuna.study_name` = 'memory'")
    by_process: dict[str, list] = {}
    for run in sorted(trials, key=lambda r: int(r.data.tags.get("optuna.trial", -1))):
        if "peak_rss_mb" in run.data.metrics:
            by_process.setdefault(run.data.tags["process"], []).append(run.data.metrics)
    for process, metrics in by_process.items():
        rss = ", ".join(f"{m['peak_rss_mb']:.0f}" for m in metrics)
        gpu = ", ".join(f"{m['peak_gpu_mem_mb']:.0f}" for m in metrics if "peak_gpu_mem_mb" in m)
        print(f"worker {process}: peak RSS per trial {rss} MB" + (f"; GPU {gpu} MB" if gpu else ""))
    print(f"machine: {machine()}")


if __name__ == "__main__":
    main()
