"""Cross-validation: a run's fold (dataset.folds, dataset.fold) cut from train and val
pooled, stratified, with the test split untouched; and a sweep over folds
(hydra.sweeper.folds), each configuration judged by its mean over folds, pruned after two
folds, and a killed sweep continued without training the folds it finished again. The
real digits data, real image folders, a real sweep in a subprocess with a real Optuna
SQLite storage and a real MLflow SQLite store."""

from __future__ import annotations

import os
import signal
import statistics
from collections import Counter

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from experiment.data import datasets
from experiment.data.datasets import fold_split
from experiment.data.loaders import build_loaders
from experiment.serving import promote
from experiment.training.builders import load_source
from tests.conftest import (
    all_runs,
    compose_config,
    output,
    run_cli,
    sqlite_uri,
    start_cli,
    sweep_args,
    tracking_overrides,
    wait_for_line,
)
from tests.test_datasets import make_image_folder
from tests.test_repeats import configuration

CPU = torch.device("cpu")


def test_every_sample_is_validated_in_exactly_one_fold_and_each_fold_keeps_the_class_shares():
    labels = datasets.digits().train_labels
    n, k = len(labels), 5
    parts = [fold_split(n, k, fold, seed=3, labels=labels) for fold in range(k)]
    held = torch.cat([h for _, h in parts])
    assert sorted(held.tolist()) == list(range(n))  # each sample in one fold's validation
    for keep, h in parts:
        assert len(keep) + len(h) == n and not set(keep.tolist()) & set(h.tolist())
    sizes = [len(h) for _, h in parts]
    assert max(sizes) - min(sizes) <= 1, sizes
    totals = Counter(labels.tolist())
    for _, h in parts:  # stratified: every class's share, to within one sample
        counts = Counter(labels[h].tolist())
        for label, total in totals.items():
            assert abs(counts[label] - total / k) < 1, (label, counts[label], total)
    again = fold_split(n, k, 2, seed=3, labels=labels)[1]
    other = fold_split(n, k, 2, seed=4, labels=labels)[1]
    assert torch.equal(again, parts[2][1]) and not torch.equal(other, parts[2][1])
    plain = torch.cat([fold_split(n, k, fold, seed=3)[1] for fold in range(k)])
    assert sorted(plain.tolist()) == list(range(n))  # without classes (regression) too


def test_a_runs_fold_is_cut_from_train_and_val_and_the_test_split_is_untouched():
    plain = build_loaders(*_dataset_and_source([]), CPU)
    pooled = len(plain.train.targets) + len(plain.val.targets)
    val_sizes = []
    for fold in range(4):
        data = build_loaders(*_dataset_and_source(["dataset.folds=4", f"dataset.fold={fold}"]), CPU)
        assert len(data.train.targets) + len(data.val.targets) == pooled
        assert torch.equal(data.test.targets, plain.test.targets)
        val_sizes.append(len(data.val.targets))
    assert sum(val_sizes) == pooled and max(val_sizes) - min(val_sizes) <= 1


@pytest.mark.parametrize("cached", [True, False], ids=["in-memory", "dataloader"])
def test_a_val_folder_is_pooled_with_train_into_stratified_folds(tmp_path, cached):
    make_image_folder(tmp_path, splits=("train", "val", "test"), per_class=6, size=8)
    cache = f"dataset.cache_dir={tmp_path / 'cache'}" if cached else "dataset.cache_dir=null"
    seen = []
    for fold in range(3):
        overrides = [
            "dataset=image_folder",
            f"dataset.source.path={tmp_path}",
            cache,
            "dataset.source.image_size=8",
            "dataset.folds=3",
            f"dataset.fold={fold}",
        ]
        data = build_loaders(*_dataset_and_source(overrides), CPU)
        val = torch.cat([y for _, y in data.val])
        train = torch.cat([y for _, y in data.train])
        assert Counter(val.tolist()) == {0: 4, 1: 4}  # 12 images a class, a third each
        assert len(train) == 16 and len(torch.cat([y for _, y in data.test])) == 12
        seen.append(val)
    assert len(torch.cat(seen)) == 24


def _dataset_and_source(overrides: list[str]):
    cfg = compose_config(overrides)
    return cfg.dataset, load_source(cfg.dataset)


@pytest.mark.slow
@pytest.mark.timeout(300)  # minutes of work on 2 cores: two sweep processes, 16 runs
def test_a_cross_validated_sweep_is_judged_by_folds_pruned_after_two_resumed_and_promoted(
    tmp_path, monkeypatch
):
    """Four good configurations and a bad one, three folds each. The sweep is killed while
    the first trial trains its second fold; the same command then continues: the retry
    keeps the fold its lost attempt finished, the bad configuration is pruned after two
    folds."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    tracking = [
        *tracking_overrides(tmp_path),
        "tracking.log_model=false",
        "tracking.log_plots=false",
    ]
    good = [configuration(lr, 32, 0.0) for lr in (0.01, 0.005, 0.02, 0.008)]
    queued = ", ".join([*good, configuration(0.0001, 256, 0.5)])
    args = sweep_args(
        storage,
        tracking,
        "trainer.epochs=4",
        "hydra.sweeper.folds=3",
        "hydra.sweeper.pruner=null",  # the default with folds: the mean over the same folds
        f"hydra.sweeper.enqueue_trials=[{queued}]",
        n_trials=5,
    )
    proc = start_cli(args, tmp_path)
    first = wait_for_line(proc, "Trial 0, fold 1 of 3: value ")
    wait_for_line(proc, "epoch 2/4")  # its second fold trains
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    first_value = float(first.split("value ")[1].split()[0])

    resumed = run_cli(args, tmp_path)
    assert resumed.returncode == 0, output(resumed)
    study = optuna.load_study(study_name="test-study", storage=storage)
    (lost,) = [t for t in study.trials if t.state == TrialState.FAIL]
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == lost.number]
    assert lost.user_attrs["fold_values"] == [first_value]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.user_attrs["fold_values"][0] == first_value  # kept, not trained again
    assert "(trained by the attempt this trial continues)" in output(resumed)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    (pruned,) = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert len(complete) == 4 and pruned.params["optimizer.lr"] == 0.0001
    assert len(pruned.user_attrs["fold_values"]) == 2  # no third fold
    for trial in complete:
        folds = trial.user_attrs["fold_values"]
        assert len(folds) == 3 and trial.value == pytest.approx(statistics.fmean(folds))
        assert trial.user_attrs["value_std"] == pytest.approx(statistics.stdev(folds))
        assert trial.intermediate_values == dict(enumerate(folds))  # one report per fold

    runs = all_runs(sqlite_uri(tmp_path))
    assert not [r for r in runs if r.info.status == "RUNNING"]
    by_id = {r.info.run_id: r for r in runs}
    for trial in [retry, pruned]:
        trial_run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert trial_run.data.tags["optuna.folds"] == "3"
        fold_runs = [
            r for r in runs if r.data.tags.get("mlflow.parentRunId") == trial_run.info.run_id
        ]
        trained = sorted(int(r.data.tags["optuna.fold"]) for r in fold_runs)
        assert trained == ([1, 2] if trial is retry else [0, 1])  # the retry: fold 0 kept
        for run in fold_runs:
            fold = run.data.tags["optuna.fold"]
            assert (run.data.params["dataset.folds"], run.data.params["dataset.fold"]) == (
                "3",
                fold,
            )

    # The chosen configuration retrained on all of train + val (no fold held out), for
    # its folds' mean best epoch.
    best = study.best_trial
    best_folds = [
        r for r in runs if r.data.tags.get("mlflow.parentRunId") == best.user_attrs["mlflow_run_id"]
    ]
    epochs = round(statistics.fmean(int(r.data.metrics["best/epoch"]) + 1 for r in best_folds))
    uri = sqlite_uri(tmp_path)
    args = ["--study", "test-study", "--storage", storage, "--seeds", "1", "--tracking-uri", uri]
    monkeypatch.chdir(tmp_path)
    assert promote.main([*args, "--name", "digits-cv"]) == 0
    version = MlflowClient(uri).get_model_version_by_alias("digits-cv", "champion")
    retrained = MlflowClient(uri).get_run(version.run_id).data.params
    assert retrained["dataset.train_on_val"] == "True" and version.tags["train_on_val"] == "true"
    assert (retrained["dataset.folds"], retrained["dataset.fold"]) == ("None", "None")
    assert retrained["trainer.epochs"] == str(epochs)
