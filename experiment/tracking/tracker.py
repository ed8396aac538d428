"""Everything that talks to MLflow: the store, the run, params, metrics, plots, the model.

`Tracker` is the only MLflow-aware object the run uses; `NullTracker` stands in for it
with `tracking=none`. What the run records, and how it ends, is `experiment.tracking.run_record`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import time
from pathlib import Path

import torch

from experiment.errors import ConfigValueError, ExperimentError, TrackingError
from experiment.system.durable import writable_folder_problem
from experiment.system.secrets import redact
from experiment.system.signals import uninterrupted
from experiment.system.sqlite_files import create_atomically, existing_file_problem, sqlite_path
from experiment.tracking import model_log
from experiment.tracking.run_figures import RunFigures

log = logging.getLogger(__name__)

_EXPERIMENT_IDS: dict[tuple[str, str], str] = {}
# Epoch metrics are sent to the store at most this often (one write for all epochs since
# the last): a write per epoch costs ~10 ms, a tenth of a short epoch. What a killed run
# had not sent is in its checkpoints, from which a resumed run or a retried trial logs it.
FLUSH_SECONDS = 1.0


def absolute_uri(uri: str) -> str:
    """Make a relative sqlite path absolute (and its folder exist) so every process agrees."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        path = Path(uri[len(prefix) :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return prefix + str(path)
    if uri.startswith(prefix):
        Path(uri[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)
    return uri


@contextlib.contextmanager
def _few_http_retries():
    """MLflow retries a failing HTTP request 7 times with growing pauses (minutes in all):
    right for a long run riding out a server restart, too slow for the first contact."""
    key = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
    saved = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[key]
        else:
            os.environ[key] = saved


def _default_artifact_root() -> str:
    """The artifact root MLflow itself gives the Default experiment of a new store."""
    return Path("mlruns").resolve().as_uri()


def _create_mlflow_tables(uri: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, default_artifact_root=_default_artifact_root())
    store.engine.dispose()


def _point_default_experiment_here(database: Path) -> None:
    """A store copied from the template: its Default experiment's artifacts under this
    folder's mlruns/, as in a store MLflow made here."""
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (_default_artifact_root(),),
        )


def _artifact_location(artifact_root: str | None) -> str | None:
    """The file URI of a local `tracking.artifact_root`, checked before an experiment is
    created with it: MLflow would record any location and fail every run that writes there."""
    if not artifact_root:
        return None
    folder = Path(artifact_root).expanduser().resolve()
    problem = writable_folder_problem(folder)
    if problem is not None:
        raise ConfigValueError(
            "tracking.artifact_root", artifact_root, f"a folder this process can write ({problem})"
        )
    return folder.as_uri()


def _differs(wanted: str | None, existing: str | None) -> bool:
    """Whether an experiment's local artifact location is another folder than `wanted`."""
    if wanted is None or not existing or not existing.startswith("file:"):
        return False
    return wanted.rstrip("/") != existing.rstrip("/")


def _reachable(uri: str, patience: float = 10.0) -> None:
    """A database server behind `uri` answers, or the error within ~`patience` + 5 s
    (MLflow itself retries for over a minute and a half before it says so)."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("postgresql", "mysql"):
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 5}, poolclass=NullPool)
    deadline = time.monotonic() + patience
    try:
        while True:
            try:
                with engine.connect():
                    return
            except sqlalchemy.exc.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
    finally:
        engine.dispose()


def _create_store(uri: str) -> None:
    """A new SQLite store, made whole (sqlite_files): from this MLflow version's template
    once one exists."""
    import mlflow

    create_atomically(
        uri,
        _create_mlflow_tables,
        template=f"mlflow-{mlflow.__version__}",
        adapt=_point_default_experiment_here,
    )


def _system_metrics(every: float | None) -> bool:
    """Set MLflow's system metrics up to sample every `every` seconds and log each sample
    (its default waits for 10 samples: a short run would log none); False for None."""
    if every is None:
        return False
    if isinstance(every, bool) or not isinstance(every, int | float) or every <= 0:
        raise ConfigValueError("tracking.system_metrics_interval", every, "seconds > 0")
    import mlflow

    try:
        import psutil  # noqa: F401  what MLflow samples the CPU, memory and disk with
    except ImportError:
        raise TrackingError(
            "tracking.system_metrics=true needs psutil, which is not installed: "
            "pip install psutil (and nvidia-ml-py for the GPU)"
        ) from None
    mlflow.set_system_metrics_sampling_interval(every)
    mlflow.set_system_metrics_samples_before_logging(1)
    return True


class NullTracker:
    """`tracking=none`: the same calls, recorded nowhere."""

    run_id: str | None = None

    def start(self, **_) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_dataset(self, dataset, tags: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_final(self, summary, history, figure, package) -> None:
        pass

    def log_artifacts(self, folder, artifact_path: str) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    def describe(self) -> str:
        return "Tracking is off (tracking=none)."


class Tracker:
    """One MLflow run in one experiment of one store."""

    def __init__(
        self,
        uri: str,
        artifact_root: str | None,
        experiment_name: str,
        model_format: str = "pt2",
        log_plots: bool = True,
        log_model: bool = True,
        system_metrics_every: float | None = None,
    ):
        """`system_metrics_every`: seconds between samples of MLflow's system metrics
        (None: none)."""
        import mlflow

        self.mlflow = mlflow
        try:  # a SQLite store's folder: created here, and it may not be creatable
            self.uri = absolute_uri(uri)
        except OSError as err:
            raise TrackingError(
                f"Cannot use the MLflow tracking store {redact(uri)}: its folder cannot be "
                f"created ({err.strerror or err}: {err.filename}). Give tracking.uri a "
                "writable place, or run with tracking=none."
            ) from None
        self.experiment_name = experiment_name
        self.model_format, self.plots_wanted, self.model_wanted = model_format, log_plots, log_model
        self.run_id: str | None = None
        self.pending: list = []  # epoch metrics not sent yet (mlflow.entities.Metric)
        self.flushed_at = time.monotonic()
        self.system_metrics = _system_metrics(system_metrics_every)
        mlflow.set_tracking_uri(self.uri)
        if redact(self.uri) != self.uri:  # MLflow prints run URLs, credentials and all
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        local = self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
        location = _artifact_location(artifact_root) if local else None
        problem = existing_file_problem(self.uri, "experiments")
        if problem is not None:
            raise TrackingError(
                f"The MLflow store file {sqlite_path(self.uri)} {problem}. It is left as it "
                "is: restore it from a backup, or move it away (or give tracking.uri another "
                "file) to start a new store."
            )
        try:
            _reachable(self.uri)
            _create_store(self.uri)
            with _few_http_retries():  # a server that is not there: say so in seconds
                self.experiment_id = self._experiment_id(location)
        except ExperimentError:
            raise
        except Exception as err:  # any failure here means the store is unusable
            raise TrackingError(
                f"Cannot use the MLflow tracking store {redact(self.uri)}: "
                f"{type(err).__name__}: {redact(str(err)).splitlines()[0]}. "
                "Check tracking.uri (start the server, or fix the path), or run with "
                "tracking=none."
            ) from None

    def _experiment_id(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        key = (self.uri, self.experiment_name, artifact_location)
        if key in _EXPERIMENT_IDS:  # trials of a sweep reuse it: a lookup costs ~0.3 s
            return _EXPERIMENT_IDS[key]
        client = self.mlflow.MlflowClient(self.uri)
        found = client.get_experiment_by_name(self.experiment_name)
        if found is None:
            # Another process may create it between the lookup and here: that is fine.
            with contextlib.suppress(MlflowException):
                client.create_experiment(self.experiment_name, artifact_location)
            found = client.get_experiment_by_name(self.experiment_name)
        elif _differs(artifact_location, found.artifact_location):
            raise ConfigValueError(
                "tracking.artifact_root",
                artifact_location.removeprefix("file://"),
                f"the artifact location of experiment '{self.experiment_name}', "
                f"{found.artifact_location}: MLflow fixes it when it creates an experiment "
                "(give tracking.experiment_name a new name for artifacts elsewhere)",
            )
        _EXPERIMENT_IDS[key] = found.experiment_id
        return found.experiment_id

    @uninterrupted
    def start(
        self,
        *,
        run_name: str,
        params: dict[str, str],
        tags: dict[str, str],
        texts: dict[str, str],
        parent_run_id: str | None = None,
        resume_run_id: str | None = None,
        history: list[dict[str, float]] = (),
    ) -> None:
        """Start the run; with `resume_run_id`, reopen that run (its params are logged),
        update its tags (the process, the trial that continues it) and log the epochs of
        `history` that it does not hold yet."""
        if resume_run_id is not None and self._reopen(resume_run_id):
            self.mlflow.set_tags({**tags, "resumed": "true"})
            self.backfill(history)
            return
        run = self.mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=run_name,
            tags=tags,
            parent_run_id=parent_run_id,
            log_system_metrics=self.system_metrics,
        )
        self.run_id = run.info.run_id
        self.mlflow.log_params(params)
        for name, text in texts.items():
            self.mlflow.log_text(text, name)

    def _reopen(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.mlflow.start_run(run_id=run_id, log_system_metrics=self.system_metrics)
        except MlflowException as err:  # deleted, or in another store
            log.warning("Cannot reopen MLflow run %s (%s); starting a new run.", run_id, err)
            return False
        self.run_id = run.info.run_id
        return True

    @uninterrupted
    def log_dataset(self, dataset, tags: dict[str, str], attempts: int = 4) -> None:
        """The run's data as its training input (lineage.py). Runs started at once on the
        same data race to create its one dataset record (the store's unique key): the
        losers find it made on a retry. A store that still refuses costs the input, not
        the run."""
        from mlflow.exceptions import MlflowException

        for attempt in range(attempts):
            try:
                self.mlflow.log_input(dataset, context="training", tags=tags)
                return
            except MlflowException as err:
                if attempt == attempts - 1:
                    log.warning("The run's dataset input was not logged: %s", err)
                    return
                time.sleep(0.2 + random.random() * 0.5)

    @uninterrupted
    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """The epoch's metrics, sent with those of the epochs before it once FLUSH_SECONDS
        have passed since the last write (and at the run's end)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, epoch) for k, v in metrics.items()]
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            self.flush()

    @uninterrupted
    def flush(self) -> None:
        """Send the pending epoch metrics, in batches of MLflow's largest size."""
        while self.pending and self.run_id is not None:
            client = self.mlflow.MlflowClient(self.uri)
            client.log_batch(self.run_id, metrics=self.pending[:1000])
            del self.pending[:1000]
        self.flushed_at = time.monotonic()

    @uninterrupted
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    @uninterrupted
    def backfill(self, history: list[dict[str, float]]) -> None:
        """Log the epochs a killed run checkpointed but did not get to log."""
        self.flush()
        client = self.mlflow.MlflowClient(self.uri)
        logged = {m.step for m in client.get_metric_history(self.run_id, "val/loss")}
        for epoch, metrics in enumerate(history):
            if epoch not in logged:
                self.log_epoch(epoch, metrics)

    @uninterrupted
    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id is not None:  # the fluent API would start a new run otherwise
            self.mlflow.set_tags(tags)

    def log_final(self, summary, history, figure, package) -> None:
        """What a finished run adds: plots, the model and summary metrics, as configured.
        `figure`: (the metric the learning curves show, a function that draws the task's
        test figure into a folder). `package()` gives the model to log: (a CPU module in
        eval mode, a raw input example, the model's metadata), see deployable.py."""
        self.flush()
        # The model and the summary are the run's output after its last epoch: logged at
        # that step, the summary metrics (test/*, best/*, ...) are the model's metrics in
        # MLflow (its model page, search_logged_models). At a step with no metrics yet,
        # MLflow's log_model has nothing of the run to copy to the model (it would
        # rewrite each metric of its step, ~50 ms per run).
        step = len(history)
        try:
            if self.plots_wanted:
                RunFigures(self.uri, self.run_id, history, *figure).log()
            if self.model_wanted:
                self.log_model(*package(), step=step)
        finally:  # a plot or a model that found no room: the summary is recorded anyway
            self.log_metrics(summary, step)

    @uninterrupted
    def log_artifacts(self, folder, artifact_path: str) -> None:
        """The files of `folder`, under `artifact_path` in the run's artifacts."""
        self.mlflow.log_artifacts(str(folder), artifact_path)

    def log_model(
        self, model: torch.nn.Module, example: torch.Tensor, metadata: dict, step: int = 0
    ) -> None:
        """Log `model` with a signature, an input example and `metadata`, as the run's
        output at `step` (model_log.py). One that fails part-way (a full disk) leaves its
        logged model marked FAILED and none of its files."""
        try:
            model_log.log_model(self, model, example, metadata, step)
        except Exception:
            model_log.discard_failed_models(self)
            raise

    @uninterrupted
    def finish(self, status: str) -> None:
        if self.run_id is not None and self.mlflow.active_run() is not None:
            try:
                self.flush()  # the epochs of a run that failed or was stopped, too
            finally:
                self.mlflow.end_run(status)

    def describe(self) -> str:
        store = redact(self.uri)
        if not store.startswith("sqlite"):  # a tracking server: its own UI
            return f"MLflow run {self.run_id} in experiment '{self.experiment_name}': {store}"
        ui = f"`mlflow ui --backend-store-uri {store}`"
        if in_the_projects_checkout():
            ui = f"`make ui` (or {ui})"
        return (
            f"MLflow run {self.run_id} in experiment '{self.experiment_name}' at {store}. "
            f"Open the UI with {ui}."
        )


def in_the_projects_checkout() -> bool:
    """Whether the command runs in the project's own checkout, where `make ui` exists."""
    makefile = Path("Makefile")
    return makefile.is_file() and "\nui:" in makefile.read_text(errors="replace")


def build_tracker(cfg) -> Tracker | NullTracker:
    """The tracker of a `tracking` node."""
    if not cfg.enabled:
        return NullTracker()
    return Tracker(
        cfg.uri,
        cfg.artifact_root,
        cfg.experiment_name,
        cfg.model_format,
        log_plots=cfg.log_plots,
        log_model=cfg.log_model,
        system_metrics_every=cfg.system_metrics_interval if cfg.system_metrics else None,
    )
