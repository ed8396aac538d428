"""Use it from your own project: the built wheel, installed into a folder of its own, run
from a copy of examples/own_project (its own conf/, model and datasets), with nothing of
the checkout importable; and an editable install, run from folders outside the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import torch
from mlflow import MlflowClient

from tests.conftest import (
    ROOT,
    all_runs,
    cli_env,
    output,
    run_cli,
    sqlite_uri,
    stop_group,
    sweep_args,
)

pytestmark = pytest.mark.slow
OWN = ROOT / "examples" / "own_project"
SEQUENCES = ROOT / "examples" / "sequences"
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".cache",
    "mlruns",
    "multirun",
    "outputs",
    ".pytest_cache",
    "site",
    ".ruff_cache",
)


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it is installed into), built from a copy of the sources so
    the build leaves nothing in the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root), str(source)]
    subprocess.run(build, check=True, timeout=600, capture_output=True)
    (wheel,) = root.glob("experiment-*.whl")
    target = root / "site"
    install = [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, timeout=600, capture_output=True)
    return wheel, target


@pytest.mark.timeout(300)
def test_an_editable_install_sweeps_from_any_folder(tmp_path):
    """`make install`'s editable install (setuptools' compat mode), in a fresh virtual
    environment: Hydra's plugin scan finds the sweeper from a folder outside the checkout,
    for the project's app and for a plain Hydra app in its own folder."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # The dependencies are this environment's: the venv sees its site-packages.
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "-q",
        "--disable-pip-version-check",
    ]
    install = ["install", "--no-deps", "--no-build-isolation", "-e", str(source)]
    compat = ["--config-settings", "editable_mode=compat"]
    proc = subprocess.run([*pip, *install, *compat], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _in_venv(python, ["-c", "import experiment; print(experiment.__file__)"], elsewhere)
    assert where.stdout.strip() == str(source / "experiment" / "__init__.py"), output(where)
    storage = f"sqlite:///{elsewhere / 'optuna.db'}"
    one_trial = [*sweep_args(storage, ["tracking=none"], n_trials=1), "trainer.epochs=1"]
    proc = _in_venv(python, ["-m", "experiment.train", *one_trial], elsewhere)
    assert proc.returncode == 0, output(proc)
    study = optuna.load_study(study_name="test-study", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]

    sphere = source / "examples" / "sphere"  # the official plugin's example, in its folder
    proc = _in_venv(python, ["sphere.py", "--multirun", "hydra.sweeper.n_trials=3"], sphere)
    assert proc.returncode == 0, output(proc)
    (results,) = (sphere / "multirun").rglob("optimization_results.yaml")
    assert "best_value" in results.read_text()


def _in_venv(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS` in `cwd` with the installed package alone importable (not the
    checkout); stopped with its process group whatever happens."""
    proc = subprocess.Popen(
        [str(python), *args],
        cwd=cwd,
        env=cli_env({"PYTHONPATH": ""}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)
    finally:
        stop_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.mark.timeout(300)  # minutes of work on 2 cores: processes, services, several runs
def test_the_wheel_holds_the_configs_and_a_users_project_runs_from_its_own_folder(
    wheel_install, tmp_path
):
    wheel, target = wheel_install
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (ROOT / "conf").rglob("*.yaml"):
        assert f"experiment/conf/{config.relative_to(ROOT / 'conf')}" in names, config
    for module in (ROOT / "experiment").rglob("*.py"):
        assert str(module.relative_to(ROOT)) in names, module  # every subpackage ships
    assert "hydra_plugins/experiment_optuna_sweeper/sweeper.py" in names
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]

    project = tmp_path / "project"
    shutil.copytree(OWN, project)
    env = {"PYTHONPATH": str(target)}  # the installed package, not the checkout
    where = run_cli(
        [
            "-c",
            "import experiment, hydra_plugins.experiment_optuna_sweeper.sweeper as s;"
            "print(experiment.__file__); print(s.__file__)",
        ],
        project,
        env=env,
        program=[],
    )
    assert where.returncode == 0, output(where)
    assert all(line.startswith(str(target)) for line in where.stdout.split()), where.stdout

    # The embedded default (digits), from an empty folder, offline.
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(["trainer.epochs=1", "tracking=none"], empty, env=env)
    assert proc.returncode == 0 and "best val/acc" in proc.stdout, output(proc)

    # Regression through `python -m`, tracked in the project's own MLflow store.
    regression = ["--config-dir", "conf", "task=regression", "dataset=diabetes", "model=tiny"]
    proc = run_cli([*regression, "trainer.epochs=30"], project, env=env)
    assert proc.returncode == 0, output(proc)
    (run,) = all_runs(sqlite_uri(project))
    assert run.data.params["model._target_"] == "mynets.TinyNet"
    assert run.data.params["optimized_metric"] == "val/mse"
    assert run.data.metrics["test/r2"] > 0.3  # the regression learned something
    assert {"test/mse", "test/mae", "val/r2"} <= set(run.data.metrics)
    client = MlflowClient(sqlite_uri(project))
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/predicted_vs_true.png"}
    (logged,) = client.search_logged_models([run.info.experiment_id])
    model = mlflow.pytorch.load_model(logged.artifact_location)  # 10 features in, 1 out
    assert tuple(model(torch.zeros(4, 10)).shape) == (4, 1)
    # Its predictions for rows of a CSV, through the wheel's console script.
    rows = torch.linspace(-0.1, 0.1, 40).reshape(4, 10)
    (project / "rows.csv").write_text("\n".join(",".join(map(str, r.tolist())) for r in rows))
    predict = [str(target / "bin" / "experiment-predict")]

    def predicted(run_id: str, inputs: str, folder: Path) -> list[str]:
        """The CSV lines of the installed experiment-predict for a run's model."""
        args = [f"runs:/{run_id}/model", inputs, "--tracking-uri", sqlite_uri(folder)]
        proc = run_cli(args, folder, env=env, program=predict, split_stderr=True)
        assert proc.returncode == 0, output(proc)
        return proc.stdout.strip().splitlines()

    header, *lines = predicted(run.info.run_id, "rows.csv", project)
    assert header == "input,target" and [line.split(",")[0] for line in lines] == list("0123")
    with torch.no_grad():
        expected = model(rows).squeeze(1).tolist()
    assert [float(line.split(",")[1]) for line in lines] == pytest.approx(expected, rel=1e-4)

    # The sequences project (examples/sequences): dict items of variable length, padded
    # by its collate_fn, a GRU taking (tokens, lengths) by name, AUROC of its own as the
    # objective; a run through the console script (the DataLoader path), its model
    # predicting from an .npz, then a 3-trial sweep of its own key (model.hidden) for
    # val/auroc.
    sequences = tmp_path / "sequences"
    shutil.copytree(SEQUENCES, sequences)
    script = [str(target / "bin" / "experiment-train")]  # run by this Python, as pip wrote it
    small = ["dataset.source.samples=300", "trainer.epochs=3"]
    gru = ["--config-dir", "conf", "dataset=motifs", "model=gru", "task=auroc", *small]
    proc = run_cli(gru, sequences, env=env, program=script)
    assert proc.returncode == 0, output(proc)
    (scored,) = all_runs(sqlite_uri(sequences))
    assert scored.info.status == "FINISHED" and scored.data.params["task.metric"] == "val/auroc"
    assert {"train/auroc", "val/auroc", "test/auroc", "test/acc"} <= set(scored.data.metrics)
    assert 0.0 <= scored.data.metrics["test/auroc"] <= 1.0
    tokens = np.array([[7, 3, 5, 0], [1, 2, 4, 6]])  # the motif, and none; padded with 0
    np.savez(sequences / "two.npz", tokens=tokens, lengths=np.array([2, 4]))
    header, *lines = predicted(scored.info.run_id, "two.npz", sequences)
    assert header == "input,class,probability" and len(lines) == 2
    assert all(line.split(",")[1] in {"0", "1"} for line in lines)  # the labels
    storage = f"sqlite:///{sequences / 'optuna.db'}"
    quick = ["tracking.log_model=false", "tracking.log_plots=false", "trainer.epochs=2"]
    sweep = [
        *["--config-dir", "conf", "-m", "hparams_search=gru", "hydra.sweeper.n_trials=3"],
        *[f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=gru", *small, *quick],
    ]
    proc = run_cli(sweep, sequences, env=env)
    assert proc.returncode == 0, output(proc)
    study = optuna.load_study(study_name="gru", storage=storage)
    assert study.direction.name == "MAXIMIZE" and len(study.trials) == 3
    assert all(t.state.name == "COMPLETE" and 0 <= t.value <= 1 for t in study.trials)
    assert {t.params["model.hidden"] for t in study.trials} <= {16, 32, 64}

    # The runs compared by the installed console script, from the project's folder: the
    # run and the sweep (one row, its best trial's), by the objective they share.
    compare = [str(target / "bin" / "experiment-compare")]
    proc = run_cli(["default", "--format", "csv"], sequences, env=env, program=compare)
    assert proc.returncode == 0, output(proc)
    header, *rows = proc.stdout.strip().splitlines()
    assert header.startswith("run,state,val/auroc (best),")
    assert len(rows) == len(
        [r for r in all_runs(sqlite_uri(sequences)) if "sweep.parent" not in r.data.tags]
    )
