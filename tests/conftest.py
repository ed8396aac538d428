"""Shared helpers: compose the real config, run the real CLI, read the real MLflow store."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import experiment.train  # noqa: F401  registers the schemas in Hydra's ConfigStore
from experiment.config.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores
    torch.set_num_threads(1)
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


# MLflow's own default store is ./mlflow.db: a code path that talks to MLflow before
# naming a store would create it in the directory the suite runs in.
_STRAY_STORE = Path.cwd() / "mlflow.db"
_STRAY_STORE_BEFORE = _STRAY_STORE.exists()


def pytest_sessionfinish(session, exitstatus):
    if _STRAY_STORE.exists() and not _STRAY_STORE_BEFORE:
        print(f"\nFAILED: the suite created {_STRAY_STORE}: some code used MLflow's default store")
        session.exitstatus = 1


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def sqlite_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


@functools.cache
def _empty_store() -> Path:
    """One MLflow SQLite store with its tables made, for the session: creating the tables
    takes about a second, copying the file milliseconds."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="experiment-store-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    store = SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())
    store.engine.dispose()
    return folder / "mlflow.db"


def tracking_overrides(tmp_path: Path) -> list[str]:
    """An MLflow SQLite store (a copy of an empty one) and its artifacts under tmp_path."""
    database = tmp_path / "mlruns" / "mlflow.db"
    if not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_empty_store(), database)
    return [
        f"tracking.uri={sqlite_uri(tmp_path)}",
        f"tracking.artifact_root={tmp_path / 'mlruns' / 'artifacts'}",
    ]


def store_overrides(tmp_path: Path) -> list[str]:
    """MLflow store and checkpoints under tmp_path."""
    return [*tracking_overrides(tmp_path), f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}"]


def compose_config(overrides: list[str]):
    """The real config, composed as the CLI would, outside a Hydra run (what `run` takes).

    `${hydra:runtime.output_dir}` only resolves inside a run, so the checkpoint folder
    gets a plain default unless the overrides name one.
    """
    if not any(o.startswith("trainer.checkpoint_dir=") for o in overrides):
        overrides = [*overrides, "trainer.checkpoint_dir=checkpoints"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_config(overrides: list[str]) -> RunConfig:
    """The composed config as it has entered the code: typed and checked (what the
    builders take)."""
    return RunConfig.enter(compose_config(overrides))


def train_in_process(monkeypatch, *overrides: str) -> None:
    """`python -m experiment.train OVERRIDES`, through its Hydra entry, in this process
    (errors reported as the command reports them: one line and SystemExit)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["experiment.train", *overrides])
    experiment.train.main()


def cli_env(extra: dict | None = None) -> dict:
    # One thread per process: the suite runs two tests at once on its cores (pytest -n).
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        **(extra or {}),
    }
    env.pop("HYDRA_FULL_ERROR", None)  # the CLI as users see it: one line per error
    return env


TRAIN = ["-m", "experiment.train"]


def start_cli(
    args: list[str],
    cwd: Path,
    env: dict | None = None,
    stdout=subprocess.PIPE,
    program: list[str] = TRAIN,
    stderr=subprocess.STDOUT,
) -> subprocess.Popen:
    """`python -m experiment.train ARGS` (or another `program`: a script, say) in the
    background, in its own process group, with
    stdout+stderr going to `stdout` (a pipe readable line by line, a file, a terminal;
    `stderr=subprocess.PIPE` keeps stderr apart). Whatever the test does, the process
    group is stopped when the test ends."""
    proc = subprocess.Popen(
        [sys.executable, *program, *args],
        cwd=cwd,
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=cli_env(env),
        start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    _STARTED.append(proc)
    return proc


def _ctrl_c_as_in_a_terminal() -> None:
    """A suite started in the background (`make test &`, some CI runners) has SIGINT
    ignored, and a child inherits that: Python then never turns SIGINT into
    KeyboardInterrupt. The CLI under test gets SIGINT as a terminal delivers it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_started_processes():
    yield
    while _STARTED:
        stop_group(_STARTED.pop())


def run_cli(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    env: dict | None = None,
    program: list[str] = TRAIN,
    split_stderr: bool = False,
):
    """`start_cli` to its end; `.stdout` holds stdout+stderr (with `split_stderr`, stdout
    alone, and `.stderr` stderr). A run past `timeout` is killed with its process group
    (workers included)."""
    stderr = subprocess.PIPE if split_stderr else subprocess.STDOUT
    proc = start_cli(args, cwd, env, program=program, stderr=stderr)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err or "")


def stop_group(proc: subprocess.Popen) -> None:
    """Kill what is left of a process started in its own group; reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # The group may outlive its leader (sweep workers): end the rest too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def wait_for_line(
    proc: subprocess.Popen, *fragments: str, timeout: float = 180, seen: list | None = None
) -> str:
    """Read the process's output until a line holds one of `fragments` (the lines before
    it go to `seen`). The deadline holds even when the process prints nothing: the pipe is
    polled, and read a byte at a time so that nothing past the line is taken from a later
    `communicate()`."""
    deadline = time.monotonic() + timeout
    descriptor, line = proc.stdout.fileno(), b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no line with {fragments} within {timeout}s")
        if not select.select([descriptor], [], [], left)[0]:
            continue
        byte = os.read(descriptor, 1)
        if not byte:
            raise AssertionError(f"the process ended without printing any of {fragments}")
        line += byte
        if byte == b"\n":
            text, line = line.decode(errors="replace"), b""
            if any(f in text for f in fragments):
                return text
            if seen is not None:
                seen.append(text)


def sweep_args(
    storage: str,
    tracking: list[str],
    *extra: str,
    n_trials: int = 4,
    study: str = "test-study",
    data: list[str] = FAST,
) -> list[str]:
    """A `-m hparams_search=optuna` sweep over `data` with its study in `storage` and
    MLflow settings `tracking` (see `store_overrides`)."""
    return [
        "-m",
        "hparams_search=optuna",
        *data,
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.n_trials={n_trials}",
        *tracking,
        *extra,
    ]


def files_holding(root: Path, *secrets: str) -> list[Path]:
    """Every file under `root` (logs, YAML, SQLite stores, checkpoints, pickles) whose bytes
    hold one of `secrets`."""
    needles = [secret.encode() for secret in secrets]
    return [
        path
        for path in root.rglob("*")
        if path.is_file() and any(needle in path.read_bytes() for needle in needles)
    ]


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + (proc.stderr or "")


def all_runs(uri: str):
    """Every run of every experiment in the store, as mlflow.entities.Run objects."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []  # no store, no runs (and no store created just to look)
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, max_results=1000) if experiments else []


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (see tests/services.py): its `url`, and
    `stop()` / `start()`."""
    from tests.services import postgres_server

    # Not under pytest's tmp_path: its folders are private to this user, and the server
    # runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="experiment-pg-"))
    try:
        with postgres_server(root) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres):
    return postgres.url


@pytest.fixture
def mlflow_server(tmp_path):
    from tests.services import mlflow_server

    with mlflow_server(tmp_path / "mlflow-server") as server:
        yield server


def running_trial_run(client, min_epochs: int, skip: set[str] = frozenset(), timeout: float = 180):
    """Wait for a RUNNING trial run (id not in `skip`) of the MlflowClient's store that
    has logged at least `min_epochs` epochs; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = "attributes.status = 'RUNNING'"
        for run in client.search_runs(experiments, running) if experiments else []:
            if run.info.run_id in skip or "optuna.trial" not in run.data.tags:
                continue
            if len(client.get_metric_history(run.info.run_id, "val/loss")) >= min_epochs:
                return run
        time.sleep(0.1)
    raise AssertionError(f"no trial run reached {min_epochs} epochs within {timeout}s")
