"""The command line as users run it: real Hydra processes, real MLflow store."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import (
    FAST,
    all_runs,
    files_holding,
    output,
    run_cli,
    sqlite_uri,
    start_cli,
    store_overrides,
    wait_for_line,
)

pytestmark = pytest.mark.slow
PASSWORD = "Wh-s3cret-9"

# The README's override example (its epochs and seed aside).
README_OVERRIDES = [
    "model=mlp",
    "optimizer=sgd",
    "optimizer.lr=0.05",
    "scheduler=step",
    "regularization=strong",
    "dataset.batch_size=32",
]


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_cli(["--cfg", "job", *README_OVERRIDES], tmp_path)
    assert proc.returncode == 0, output(proc)
    text = proc.stdout
    assert "_target_: experiment.models.nets.MLP" in text
    assert "_target_: torch.optim.SGD" in text and "lr: 0.05" in text
    assert "batch_size: 32" in text and "StepLR" in text


def test_console_script_matches_module(tmp_path):
    script = shutil.which("experiment-train", path=os.path.dirname(sys.executable))
    assert script, "the experiment-train console script is installed with the package"
    proc = subprocess.run(
        [script, "--cfg", "job", "model=resnet18"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, output(proc)
    assert "experiment.models.nets.ResNet18" in proc.stdout


def test_single_run_with_overrides(tmp_path):
    proc = run_cli(
        [
            *FAST,
            *README_OVERRIDES,
            "trainer.seed=1",
            *store_overrides(tmp_path),
            # A password the run hands its job's environment: in no file it writes.
            f"+hydra.job.env_set.WAREHOUSE=postgresql://reader:{PASSWORD}@db.example/w",
        ],
        tmp_path,
        env={"PYTHONPROFILEIMPORTTIME": "1"},
        split_stderr=True,
    )
    assert proc.returncode == 0, output(proc)
    # A single run imports neither Optuna nor the sweep engine (Hydra's plugin scan runs
    # the sweeper's face only); a trial's view of its sweep (sweep.context) is all it needs.
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert {"mlflow", "torch", "experiment.training.run"} <= imported
    assert not {m for m in imported if m.split(".")[0] == "optuna"}
    assert {m for m in imported if m.startswith("experiment.sweep")} == {
        "experiment.sweep",
        "experiment.sweep.context",
        "experiment.sweep.protocol",
    }
    # Outside the project's checkout: the MLflow command, not `make ui`.
    assert "MLflow run" in proc.stdout and "mlflow ui --backend-store-uri" in proc.stdout
    assert "make ui" not in proc.stdout
    (finished,) = all_runs(sqlite_uri(tmp_path))
    assert finished.info.status == "FINISHED"
    assert finished.data.params["regularization.label_smoothing"] == "0.1"
    assert finished.data.params["dataset.batch_size"] == "32"
    assert (
        "- trainer.seed=1"
        in (tmp_path / "mlruns")
        .joinpath("artifacts")
        .rglob("overrides.yaml")
        .__next__()
        .read_text()
    )
    assert not files_holding(tmp_path, PASSWORD)  # .hydra/, checkpoints, MLflow store
    hydra_yaml = next(tmp_path.rglob("hydra.yaml")).read_text()
    assert re.search(r"reader:\$\{oc\.env:EXPERIMENT_SECRET_\d+\}@db", hydra_yaml), hydra_yaml


def test_multirun_over_two_overrides(tmp_path):
    overrides = [o for o in store_overrides(tmp_path) if "checkpoint_dir" not in o]
    proc = run_cli(
        ["-m", *FAST, "model=mlp,cnn", "trainer.seed=0,1", *overrides, "tracking.log_model=false"],
        tmp_path,
    )
    assert proc.returncode == 0, output(proc)
    runs = all_runs(sqlite_uri(tmp_path))
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    combos = {(r.data.params["model._target_"], r.data.params["trainer.seed"]) for r in runs}
    assert len(combos) == 4
    # Each job kept its own checkpoints in its own Hydra output directory.
    assert len(list((tmp_path / "multirun").rglob("best.pt"))) == 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_is_marked_killed(tmp_path, signum):
    args = [
        *FAST,
        "trainer.epochs=200",
        "regularization.early_stopping.patience=null",
        *store_overrides(tmp_path),
    ]
    proc = start_cli(args, tmp_path, stderr=subprocess.PIPE)
    wait_for_line(proc, "epoch 2/")  # training is under way
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    (killed,) = all_runs(sqlite_uri(tmp_path))
    assert killed.info.status == "KILLED", err[-4000:]  # what the run said as it ended
    # One line, no traceback, and the shell's status for the signal (130, 143).
    assert proc.returncode == 128 + signum, err[-4000:]
    assert err.strip().splitlines()[-1] == (
        f"Stopped by {signal.Signals(signum).name}: MLflow run {killed.info.run_id} marked "
        "KILLED; the same command with trainer.resume=auto continues it."
    )
    assert "Traceback" not in err


def test_the_python_api_shows_progress_without_any_logging_setup(tmp_path):
    """`experiment.run` in a fresh interpreter (a notebook's situation: nothing configured
    logging) shows the epochs and the result as the command line does."""
    script = (
        "import experiment\n"
        f"cfg = experiment.compose({[*FAST, 'tracking=none', 'trainer.checkpoint_dir=ckpt']!r})\n"
        "print('value', experiment.run(cfg))\n"
    )
    proc = run_cli(["-c", script], tmp_path, program=[], split_stderr=True)
    assert proc.returncode == 0, output(proc)
    assert "epoch 1/" in proc.stdout and "best val/acc" in proc.stdout, output(proc)
    assert proc.stdout.rstrip().splitlines()[-1].startswith("value ")
