"""`trainer.resume=auto`: a run killed with SIGKILL continues from its last checkpoint, in
the same MLflow run, and ends where the uninterrupted run ends (a regression here; the
killed ranks of test_distributed resume a classification)."""

from __future__ import annotations

import os
import signal

import pytest
from mlflow import MlflowClient

from experiment.config.run_config import fingerprint
from experiment.training import resume
from experiment.training.checkpoint import load_checkpoint
from tests.conftest import all_runs, output, run_cli, sqlite_uri, start_cli, wait_for_line

pytestmark = pytest.mark.slow

RUN = [
    "task=regression",
    "dataset=synthetic_regression",
    "model=mlp",
    "model.hidden_sizes=[64]",
    "dataset.source.num_train=1200",
    "dataset.source.num_test=200",
    "trainer.epochs=10",
    "trainer.deterministic=true",
    "regularization.early_stopping.patience=null",
    "tracking.log_model=false",
]


def store_args(workdir):
    return [
        *RUN,
        f"tracking.uri={sqlite_uri(workdir)}",
        f"tracking.artifact_root={workdir / 'mlruns' / 'artifacts'}",
    ]


def final_metrics(workdir) -> tuple[dict, list]:
    (run,) = all_runs(sqlite_uri(workdir))
    history = MlflowClient(sqlite_uri(workdir)).get_metric_history(run.info.run_id, "val/mse")
    return run, sorted((m.step, m.value) for m in history)


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_sigkilled_run_resumes_in_the_same_mlflow_run_with_the_same_result(tmp_path):
    reference_dir, resumed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    reference_dir.mkdir()
    resumed_dir.mkdir()
    reference = run_cli(store_args(reference_dir), reference_dir)
    assert reference.returncode == 0, output(reference)

    proc = start_cli([*store_args(resumed_dir), "trainer.resume=auto"], resumed_dir)
    try:
        wait_for_line(proc, "epoch 4/10")
        os.killpg(proc.pid, signal.SIGSTOP)  # alive, holding its folder
        # The same command while it lives: refused, naming it (not two writers of one run).
        second = run_cli([*store_args(resumed_dir), "trainer.resume=auto"], resumed_dir)
        assert second.returncode == 2, output(second)
        assert f"is being written by process {proc.pid} on " in output(second)
        assert "Traceback" not in output(second)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    (killed,) = all_runs(sqlite_uri(resumed_dir))
    assert killed.info.status == "RUNNING"
    assert "test/mse" not in killed.data.metrics
    (last,) = (resumed_dir / "outputs").rglob("last.pt")
    last.write_bytes(last.read_bytes()[:1000])  # damaged: best.pt, a file of its own, is not

    resumed = run_cli([*store_args(resumed_dir), "trainer.resume=auto"], resumed_dir)
    assert resumed.returncode == 0, output(resumed)
    assert "continuing from best.pt instead" in output(resumed)
    assert "epoch 1/10 " not in output(resumed)  # it did not start over

    expected, expected_history = final_metrics(reference_dir)
    run, history = final_metrics(resumed_dir)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["resumed"] == "true"
    for key in ("test/mse", "test/r2", "test/loss", "best/value", "best/epoch"):
        assert run.data.metrics[key] == pytest.approx(expected.data.metrics[key], rel=1e-6)
    # Every epoch; those after best.pt's epoch trained (and logged) again, to the same values.
    assert sorted(dict(history)) == list(range(10))
    assert [v for _, v in sorted(dict(history).items())] == pytest.approx(
        [v for _, v in expected_history], rel=1e-6
    )

    # A finished run is never resumed: auto finds nothing to continue.
    (checkpoint,) = (resumed_dir / "outputs").rglob("last.pt")
    assert (checkpoint.parent / resume.COMPLETE_MARKER).exists()
    state = load_checkpoint(checkpoint)
    wanted = fingerprint(state["config"])
    found = resume.find("auto", wanted, checkpoint.parent, resumed_dir / "outputs")
    assert found is None
