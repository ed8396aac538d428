"""Shared helpers: compose the real config, run the real CLI, read the real MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import experiment.train  # noqa: F401  registers the schemas in Hydra's ConfigStore

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small and quick: a few hundred synthetic 1x12x12 images, two epochs.
FAST = [
    "dataset=synthetic",
    "dataset.source.num_train=400",
    "dataset.source.num_test=100",
    "dataset.source.height=12",
    "dataset.source.width=12",
    "dataset.source.num_classes=4",
    "trainer.epochs=2",
]


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def store_overrides(tmp_path: Path) -> list[str]:
    return [
        f"tracking.uri={sqlite_uri(tmp_path)}",
        f"tracking.artifact_root={tmp_path / 'mlruns' / 'artifacts'}",
        f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}",
    ]


def compose_config(overrides: list[str]):
    """The real config, composed as the CLI would, outside a Hydra run.

    `${hydra:runtime.output_dir}` only resolves inside a run, so the checkpoint folder
    gets a plain default unless the overrides name one.
    """
    if not any(o.startswith("trainer.checkpoint_dir=") for o in overrides):
        overrides = [*overrides, "trainer.checkpoint_dir=checkpoints"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None):
    """`python -m experiment.train ARGS` in a subprocess; output is stdout+stderr."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "experiment.train", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def start_cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m experiment.train ARGS` in the background, in its own process group,
    with stdout+stderr readable line by line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "experiment.train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def wait_for_line(proc: subprocess.Popen, *fragments: str, timeout: float = 180) -> str:
    """Read the process's output until a line holds one of `fragments`."""
    deadline = time.time() + timeout
    for line in proc.stdout:
        if any(f in line for f in fragments):
            return line
        assert time.time() < deadline, f"no line with {fragments} within {timeout}s"
    raise AssertionError(f"the process ended without printing any of {fragments}")


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


def all_runs(uri: str):
    """Every run of every experiment in the store, as mlflow.entities.Run objects."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000) if experiments else []


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (see tests/services.py)."""
    import shutil
    import tempfile

    from tests.services import postgres_server

    # Not under pytest's tmp_path: its folders are private to this user, and the server
    # runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="experiment-pg-"))
    try:
        with postgres_server(root) as url:
            yield url
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path):
    from tests.services import mlflow_server

    server = mlflow_server(tmp_path / "mlflow-server").start()
    yield server
    server.stop()
