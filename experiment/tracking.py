"""Everything MLflow: the store, the run, params, per-epoch metrics, the model.

`Tracker` is the only MLflow-aware object the run uses; `NullTracker` stands in for it
with `tracking=none`. A run is always closed with a final status (FINISHED, FAILED,
KILLED): none is left RUNNING by an exception or Ctrl-C.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from experiment.errors import ExperimentError, TrackingError
from experiment.secrets import redact
from experiment.sqlite_files import create_atomically

log = logging.getLogger(__name__)

_EXPERIMENT_IDS: dict[tuple[str, str], str] = {}


def flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to {'a.b.c': leaf}; lists stay whole leaves."""
    if not isinstance(container, dict):
        return {prefix: container}
    flat: dict[str, Any] = {}
    for key, value in container.items():
        nested = isinstance(value, dict)
        flat.update(flatten(value, f"{prefix}{key}." if nested else f"{prefix}{key}"))
    return flat


def config_params(cfg: DictConfig) -> dict[str, str]:
    """Every leaf of the resolved config as a string MLflow param, secrets redacted."""
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    resolved.pop("hydra", None)
    return {key: redact(str(value)) for key, value in flatten(resolved).items()}


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


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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


def _create_mlflow_tables(uri: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    # The artifact root MLflow itself gives the Default experiment of a new store.
    store = SqlAlchemyStore(uri, default_artifact_root=Path("mlruns").resolve().as_uri())
    store.engine.dispose()


class NullTracker:
    """`tracking=none`: the same calls, recorded nowhere."""

    run_id: str | None = None

    def start(self, **_) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float]) -> None:
        pass

    def log_final(self, summary, history, figure, model, example) -> None:
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
    ):
        import mlflow

        self.mlflow = mlflow
        self.uri = absolute_uri(uri)
        self.experiment_name = experiment_name
        self.model_format, self.plots_wanted, self.model_wanted = model_format, log_plots, log_model
        self.run_id: str | None = None
        mlflow.set_tracking_uri(self.uri)
        if redact(self.uri) != self.uri:  # MLflow prints run URLs, credentials and all
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        local = self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri
        location = Path(artifact_root).resolve().as_uri() if artifact_root and local else None
        try:
            create_atomically(self.uri, _create_mlflow_tables)
            with _few_http_retries():  # a server that is not there: say so in seconds
                self.experiment_id = self._experiment_id(location)
        except Exception as err:  # any failure here means the store is unusable
            raise TrackingError(
                f"Cannot use the MLflow tracking store {redact(self.uri)}: "
                f"{type(err).__name__}: {redact(str(err)).splitlines()[0]}. "
                "Check tracking.uri (start the server, or fix the path), or run with "
                "tracking=none."
            ) from None

    def _experiment_id(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        key = (self.uri, self.experiment_name)
        if key in _EXPERIMENT_IDS:  # trials of a sweep reuse it: a lookup costs ~0.3 s
            return _EXPERIMENT_IDS[key]
        client = self.mlflow.MlflowClient(self.uri)
        found = client.get_experiment_by_name(self.experiment_name)
        if found is None:
            # Another process may create it between the lookup and here: that is fine.
            with contextlib.suppress(MlflowException):
                client.create_experiment(self.experiment_name, artifact_location)
            found = client.get_experiment_by_name(self.experiment_name)
        _EXPERIMENT_IDS[key] = found.experiment_id
        return found.experiment_id

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
        """Start the run; with `resume_run_id`, reopen that run (its params are logged) and
        log the epochs of `history` that it does not hold yet."""
        if resume_run_id is not None and self._reopen(resume_run_id):
            self.mlflow.set_tags({"resumed": "true"})
            self.backfill(history)
            return
        run = self.mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=run_name,
            tags=tags,
            parent_run_id=parent_run_id,
        )
        self.run_id = run.info.run_id
        self.mlflow.log_params(params)
        for name, text in texts.items():
            self.mlflow.log_text(text, name)

    def _reopen(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            run = self.mlflow.start_run(run_id=run_id)
        except MlflowException as err:  # deleted, or in another store
            log.warning(f"Cannot reopen MLflow run {run_id} ({err}); starting a new run.")
            return False
        self.run_id = run.info.run_id
        return True

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self.mlflow.log_metrics(metrics)

    def backfill(self, history: list[dict[str, float]]) -> None:
        """Log the epochs a killed run checkpointed but did not get to log."""
        client = self.mlflow.MlflowClient(self.uri)
        logged = {m.step for m in client.get_metric_history(self.run_id, "val/loss")}
        for epoch, metrics in enumerate(history):
            if epoch not in logged:
                self.log_epoch(epoch, metrics)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.run_id is not None:  # the fluent API would start a new run otherwise
            self.mlflow.set_tags(tags)

    def log_plots(self, history: list[dict], figure) -> None:
        """Learning curves and the task's test figure, as PNG under `plots/`; `figure`:
        (metric the curves show, a function that draws the test figure into a folder)."""
        import tempfile

        from experiment import plots

        metric, draw_test = figure
        with tempfile.TemporaryDirectory() as folder:
            plots.learning_curves(history, Path(folder) / "learning_curves.png", metric)
            draw_test(Path(folder))
            self.mlflow.log_artifacts(folder, "plots")

    def log_final(self, summary, history, figure, model, example) -> None:
        """What a finished run adds: summary metrics, plots and the model, as configured."""
        self.log_metrics(summary)
        if self.plots_wanted:
            self.log_plots(history, figure)
        if self.model_wanted:
            self.log_model(model, example)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """Log `model` (CPU copy, eval mode) with a signature and an input example.

        Explicit pip requirements: inferring them imports and inspects the environment,
        which costs several seconds per run.
        """
        from mlflow.models import infer_signature

        torch_version = torch.__version__.split("+")[0]  # no local tag such as +cu130
        cpu_model = copy.deepcopy(model).float().cpu().eval()
        example = example.detach().cpu().contiguous()
        example_np = (example.float() if example.is_floating_point() else example).numpy()
        with torch.no_grad():
            output = cpu_model(torch.from_numpy(example_np)).numpy()
        self.mlflow.pytorch.log_model(
            cpu_model,
            name="model",
            signature=infer_signature(example_np, output),
            input_example=example_np,
            pip_requirements=[f"torch=={torch_version}"],
            serialization_format=self.model_format,
        )

    def finish(self, status: str) -> None:
        if self.run_id is not None and self.mlflow.active_run() is not None:
            self.mlflow.end_run(status)

    def describe(self) -> str:
        store = redact(self.uri)
        ui = f"mlflow ui --backend-store-uri {store}" if store.startswith("sqlite") else store
        return (
            f"MLflow run {self.run_id} in experiment '{self.experiment_name}' at {store}. "
            f"Open the UI with `make ui` (or `{ui}`)."
        )


def build_tracker(cfg: DictConfig) -> Tracker | NullTracker:
    if not cfg.enabled:
        return NullTracker()
    return Tracker(
        cfg.uri,
        cfg.artifact_root,
        cfg.experiment_name,
        cfg.model_format,
        log_plots=cfg.log_plots,
        log_model=cfg.log_model,
    )


@contextlib.contextmanager
def store_failure_keeps(checkpoint_dir: Path, when: str):
    """A tracking store that fails mid-run: stop with a message that says where the
    trained weights are and how to continue, instead of a traceback."""
    try:
        yield
    except ExperimentError:
        raise
    except Exception as err:  # Ctrl-C (KeyboardInterrupt) is no Exception: it passes
        raise TrackingError(
            f"The MLflow tracking store failed {when}: {type(err).__name__}: "
            f"{redact(str(err)).splitlines()[0] if str(err) else ''}. Nothing trained is "
            f"lost: the checkpoints (last.pt, best.pt) are in {checkpoint_dir}. Once the "
            "store is back, run the same command with trainer.resume=auto to continue."
        ) from None


def epoch_logger(tracker: Tracker | NullTracker, checkpoint_dir: Path):
    """The epoch callback that logs each epoch's metrics."""

    def log_epoch(state) -> None:
        with store_failure_keeps(checkpoint_dir, f"in epoch {state.epoch + 1}"):
            tracker.log_epoch(state.epoch, state.metrics)

    return log_epoch


@contextlib.contextmanager
def final_status(tracker: Tracker | NullTracker, outcome):
    """Whatever happens inside, the run ends with the status (and tags) that
    `outcome(error)` gives for how it ended: none is left RUNNING."""
    error = None
    try:
        yield
    except BaseException as err:
        error = err
        raise
    finally:
        status, tags = outcome(error)
        try:
            tracker.set_tags(tags)
            tracker.finish(status)
        except Exception as err:  # the store is down: the error that brought us here counts
            log.warning(f"Could not record the run's end in MLflow: {type(err).__name__}")


def example_batch(loader, size: int = 4) -> torch.Tensor:
    """A few real, normalized inputs for the model signature and input example."""
    inputs, _ = next(iter(loader))
    inputs = inputs[:size].contiguous(memory_format=torch.contiguous_format)
    return inputs.float() if inputs.is_floating_point() else inputs
