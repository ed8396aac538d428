"""The `debug` group: `fast` (the whole path on one batch), `overfit` (a few fixed batches
learned by heart), `profile` (torch.profiler's trace and table, logged to MLflow) and
`anomaly` (tests/test_bad_input.py). Real runs of the command in this process, a real
MLflow SQLite store, the real profiler."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from mlflow import MlflowClient

from experiment.training.builders import build_parts
from experiment.training.profiling import TABLE, TRACE, StepProfiler
from tests.conftest import (
    FAST,
    all_runs,
    run_config,
    sqlite_uri,
    store_overrides,
    train_in_process,
)


def _log_text(folder) -> str:
    (log,) = folder.glob("*.log")
    return log.read_text()


@pytest.mark.slow  # a run, in this process
def test_debug_fast_runs_the_whole_path_on_one_batch_and_keeps_no_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_in_process(monkeypatch, "debug=fast")
    (log,) = tmp_path.glob("outputs/*/*/*.log")
    text = log.read_text()
    assert "epoch 1/1 " in text and "Tracking is off" in text
    assert "trained" in text and "test/acc" in text  # tested, on its one batch
    assert not (tmp_path / "mlruns").exists()  # no MLflow run
    (checkpoint,) = tmp_path.glob("outputs/*/*/checkpoints/best.pt")
    assert checkpoint.is_file()


def test_overfit_batches_are_the_same_every_epoch_and_serve_validation_and_test():
    parts = build_parts(run_config([*FAST, "trainer.overfit_batches=2"]), torch.device("cpu"))
    data = parts.data
    parts.data.seed_epoch(1)
    first = [targets for _, targets in data.train]
    parts.data.seed_epoch(2)  # another epoch's seed draws nothing new
    second = [targets for _, targets in data.train]
    assert len(first) == 2 and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert data.val is data.train and data.test is data.train


@pytest.mark.slow  # two runs, in this process
def test_debug_overfit_learns_two_batches_by_heart_and_says_when_it_cannot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_in_process(monkeypatch, "debug=overfit", "model=mlp", "hydra.run.dir=fits")
    text = _log_text(tmp_path / "fits")
    losses = [float(x) for x in re.findall(r"epoch \d+/300  train/loss (\S+)", text)]
    assert 1 < len(losses) < 300 and losses[-1] <= 0.01 < losses[-2]  # stopped at the target
    assert "Overfit 2 batches: train/loss" in text and "can learn" in text
    assert not (tmp_path / "mlruns").exists()  # no MLflow run

    train_in_process(
        monkeypatch, "debug=overfit", "optimizer.lr=1e-6", "trainer.epochs=3", "hydra.run.dir=stuck"
    )
    text = _log_text(tmp_path / "stuck")
    assert len(re.findall(r"epoch \d+/3  train/loss", text)) == 3
    assert "Overfit 2 batches: train/loss still" in text and "after 3 epochs" in text


def test_the_profiler_writes_a_trace_and_a_table_of_the_recorded_steps(tmp_path, caplog):
    model = torch.nn.Linear(8, 2)
    with StepProfiler(2, tmp_path / "profile", torch.device("cpu")) as profiler:
        for _ in range(5):  # one warm-up step, two recorded, then no more
            model(torch.randn(4, 8)).sum().backward()
            profiler.step()
    trace = json.loads((tmp_path / "profile" / TRACE).read_text())
    steps = {
        e["name"] for e in trace["traceEvents"] if e.get("name", "").startswith("ProfilerStep")
    }
    assert steps == {"ProfilerStep#1", "ProfilerStep#2"}
    table = (tmp_path / "profile" / TABLE).read_text()
    assert "Self CPU" in table and "aten::addmm" in table

    caplog.set_level(logging.WARNING, logger="experiment")
    with StepProfiler(3, tmp_path / "none", torch.device("cpu")) as profiler:
        profiler.step()  # the warm-up step alone
    assert not (tmp_path / "none").exists()
    assert "nothing was profiled" in caplog.text


@pytest.mark.slow  # a run, in this process
def test_debug_profile_logs_the_trace_and_the_table_to_the_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_epoch = [o for o in FAST if not o.startswith("trainer.epochs=")]  # the mode's own
    train_in_process(
        monkeypatch, *one_epoch, "debug=profile", *store_overrides(tmp_path), "hydra.run.dir=prof"
    )
    text = _log_text(tmp_path / "prof")
    # An epoch of fewer batches than the warm-up and the 5 steps: what it had is written.
    batches = re.search(r"Profiled (\d) training step", text)
    assert "epoch 1/1 " in text and batches and 1 <= int(batches[1]) < 5
    assert (tmp_path / "prof" / "profile" / TRACE).is_file()
    (run,) = all_runs(sqlite_uri(tmp_path))
    files = MlflowClient(sqlite_uri(tmp_path)).list_artifacts(run.info.run_id, "profile")
    assert sorted(f.path for f in files) == [f"profile/{TABLE}", f"profile/{TRACE}"]
