"""Training throughput on 1 and N ranks: the plain single-process path, the DDP path with
one rank (what torch.distributed costs by itself), and N ranks under torchrun.

Every configuration trains the same run (same global batch); images/s is the median of
the per-epoch `samples_per_s` the run logs to MLflow, first epoch left out (warm-up).
On a GPU machine N ranks use N GPUs; on a CPU machine the ranks share its cores, so there
the figures show the overhead and that it works, not a speed-up.

    .venv/bin/python -m benchmarks.distributed [--ranks 2] [--epochs 6] [OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from benchmarks._common import machine, run_cli, store_args


def torchrun(ranks: int) -> list[str]:
    return [
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        "-m",
        "experiment.train",
    ]


def images_per_second(folder: Path) -> float:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments)
    history = sorted(
        client.get_metric_history(run.info.run_id, "samples_per_s"), key=lambda m: m.step
    )
    return statistics.median(m.value for m in history[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("overrides", nargs="*", help="overrides for every run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    common = [f"trainer.epochs={args.epochs}", "tracking.log_model=false", *args.overrides]
    setups = {
        "plain, 1 process": None,
        "DDP, 1 rank": torchrun(1),
        f"DDP, {args.ranks} ranks": torchrun(args.ranks),
    }
    results = {}
    for name, program in setups.items():
        folder = work / name.replace(" ", "").replace(",", "_")
        folder.mkdir()
        extra = {"program": program} if program else {}
        run_cli([*common, *store_args(folder)], folder, **extra)
        results[name] = images_per_second(folder)
    print(f"machine: {machine()}")
    print(f"run: {' '.join(common)}")
    reference = results["plain, 1 process"]
    for name, value in results.items():
        print(f"{name:<20} {value:10.0f} images/s   {value / reference:5.2f}x plain")


if __name__ == "__main__":
    main()
