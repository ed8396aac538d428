"""The sweep a user would write by hand, the reference of `benchmarks.sweep_vs_script`.

An Optuna study in SQLite shared by worker processes (one torch thread each), a
tutorial-style training loop over a DataLoader, one MLflow run per trial with its params,
per-epoch metrics and a pickled model with explicit requirements. The same digits data,
split, normalization and CNN as the project's default run, the same search space.

    python -m benchmarks.plain_script STORAGE STUDY MLFLOW_URI EPOCHS WORKERS CONFIGS [--prune]

It creates the study with the configurations of the JSON file CONFIGS enqueued (a list of
{param: value}); the workers share them out as a user's processes would,
`study.optimize(n_trials=N / WORKERS)` each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from pathlib import Path

import mlflow
import optuna
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from experiment.data.datasets import digits, seeded_split
from experiment.models.nets import CNN

MEAN, STD = 0.3053, 0.3759  # the digits option's normalization


def data():
    source = digits()
    keep, held = seeded_split(len(source.train_labels), 0.1, 0)
    images = (source.train_images.float() / 255.0 - MEAN) / STD
    train = TensorDataset(images[keep], source.train_labels[keep])
    return train, (images[held], source.train_labels[held])


def objective(trial: optuna.Trial, epochs: int, prune: bool, train, val) -> float:
    lr = trial.suggest_float("optimizer.lr", 1e-4, 1e-1, log=True)
    batch_size = trial.suggest_categorical("dataset.batch_size", [32, 64, 128, 256])
    dropout = trial.suggest_float("regularization.dropout", 0.0, 0.5)
    decay = trial.suggest_float("regularization.weight_decay", 1e-6, 1e-2, log=True)
    model = CNN((1, 8, 8), 10, dropout=dropout, batch_norm=True, init="kaiming")
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True)
    best = 0.0
    with mlflow.start_run(run_name=f"trial-{trial.number}"):
        mlflow.log_params(trial.params)
        for epoch in range(epochs):
            model.train()
            for inputs, targets in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(inputs), targets)
                loss.backward()
                optimizer.step()
            schedule.step()
            model.eval()
            with torch.no_grad():
                accuracy = (model(val[0]).argmax(1) == val[1]).float().mean().item()
            best = max(best, accuracy)
            mlflow.log_metrics({"val/acc": accuracy, "train/loss": loss.item()}, step=epoch)
            trial.report(accuracy, epoch)
            if prune and trial.should_prune():
                raise optuna.TrialPruned()
        mlflow.pytorch.log_model(
            model,
            name="model",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            serialization_format="pickle",
        )
    return best


def worker(storage: str, study_name: str, uri: str, epochs: int, prune: bool, n: int) -> None:
    torch.set_num_threads(1)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("plain-script")
    train, val = data()
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.optimize(lambda trial: objective(trial, epochs, prune, train, val), n_trials=n)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("storage", "study", "uri"):
        parser.add_argument(name)
    parser.add_argument("epochs", type=int)
    parser.add_argument("workers", type=int)
    parser.add_argument("configs")
    parser.add_argument("--prune", action="store_true")
    args = parser.parse_args()
    configs = json.loads(Path(args.configs).read_text())
    study = optuna.create_study(study_name=args.study, storage=args.storage, direction="maximize")
    for config in configs:
        study.enqueue_trial(config)
    shares = [len(configs) // args.workers] * args.workers
    shares[0] += len(configs) % args.workers
    # The store and its experiment made once, before the workers: two processes creating
    # a new SQLite store at once race on its tables, and one of them fails.
    mlflow.set_tracking_uri(args.uri)
    mlflow.set_experiment("plain-script")
    context = mp.get_context("spawn")
    settings = (args.storage, args.study, args.uri, args.epochs, args.prune)
    processes = [context.Process(target=worker, args=(*settings, n)) for n in shares]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    if failed:
        raise SystemExit(f"{len(failed)} worker(s) failed (exit codes {failed})")


if __name__ == "__main__":
    main()
