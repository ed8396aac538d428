"""The run's model, logged to MLflow: with a signature, an input example and its metadata.

The pt2 format (MLflow's default) traces the model with `torch.export`; a model it cannot
trace (a branch on its input's values, say) is logged in the pickled format instead, with
one warning that says why, and the attempt that failed is removed. A failing store stays
the store's error. Explicit pip requirements: inferring them imports and inspects the
environment, which costs several seconds per run. A model of several inputs (or
predictions) is logged as a pyfunc model that takes them by name (structured_model.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import numpy as np
import torch

from experiment.data.batches import input_names, leaves, structured
from experiment.system.secrets import redact

log = logging.getLogger(__name__)

# Where torch.export traces a model: an error raised from these is the model's, not the store's.
_EXPORT_CODE = ("/torch/export/", "/torch/_export/", "/torch/_dynamo/", "/torch/fx/")


def log_model(tracker, model: torch.nn.Module, example, metadata: dict, step: int):
    """Log `model` in `tracker`'s run (a Tracker) at `step`, in its model format; `example`:
    a few raw inputs (a tensor, or a tuple or dict of them)."""
    from mlflow.models import infer_signature

    with torch.no_grad():
        predictions = model(example)
    if structured(example) or not isinstance(predictions, torch.Tensor):
        _log_named_inputs(tracker, model, example, predictions, metadata, step)
        return
    example_np = example.detach().cpu().contiguous().numpy()
    with torch.no_grad():
        output = model(torch.from_numpy(example_np)).numpy()
    logged = (model, example_np, infer_signature(example_np, output), metadata, step)
    try:
        _log(tracker, *logged, tracker.model_format)
    except Exception as err:
        if tracker.model_format != "pt2" or not raised_by_export(err):
            raise
        reason = redact(str(err)).strip().splitlines()[0] if str(err).strip() else ""
        log.warning(
            "The model cannot be exported as a pt2 graph (%s: %s); logged pickled instead "
            "(tracking.model_format=pickle: it loads back where its class is importable).",
            type(err).__name__,
            reason,
        )
        _log(tracker, *logged, "pickle")
        _delete_failed_models(tracker)


def raised_by_export(err: BaseException) -> bool:
    """Whether `err` came from tracing the model for the pt2 format."""
    trace = err.__traceback__
    while trace is not None:
        if any(part in trace.tb_frame.f_code.co_filename for part in _EXPORT_CODE):
            return True
        trace = trace.tb_next
    return type(err).__module__.startswith(("torch._dynamo", "torch.export", "torch._export"))


def _log(tracker, model, example_np, signature, metadata, step, model_format) -> None:
    tracker.mlflow.pytorch.log_model(
        model,
        name="model",
        signature=signature,
        input_example=example_np,
        pip_requirements=pip_requirements(),
        serialization_format=model_format,
        metadata=metadata,
        step=step,
    )


def _log_named_inputs(tracker, model, example, predictions, metadata: dict, step: int) -> None:
    """A model of several inputs as a pyfunc model of named arrays; every dimension but
    none is fixed in its signature (sequences vary in length)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from experiment.tracking.structured_model import NamedInputsModel, as_arrays

    names = input_names(example)
    arrays = {n: x.detach().cpu().numpy() for n, x in zip(names, leaves(example), strict=True)}
    outputs = as_arrays(predictions)
    outputs = outputs if isinstance(outputs, dict) else {None: outputs}

    def spec(array: np.ndarray, name) -> TensorSpec:
        return TensorSpec(array.dtype, (-1,) * array.ndim, name)

    signature = ModelSignature(
        Schema([spec(a, n) for n, a in arrays.items()]),
        Schema([spec(a, n) for n, a in outputs.items()]),
    )
    form = "dict" if isinstance(example, dict) else "tuple"
    with tempfile.TemporaryDirectory() as folder, _quiet_pyfunc_logging():
        path = os.path.join(folder, "module.pt")
        torch.save(model, path)
        tracker.mlflow.pyfunc.log_model(
            name="model",
            python_model=NamedInputsModel(names, form),
            artifacts={"module": path},
            signature=signature,
            input_example=arrays,
            pip_requirements=pip_requirements(),
            # The names the pyfunc model takes its arrays by (experiment-predict reads them).
            metadata={**metadata, "experiment.input_names": names},
            step=step,
        )


@contextlib.contextmanager
def _quiet_pyfunc_logging():
    """MLflow's advice to log models from code instead of a pickled object does not apply
    to one the run writes (its class is the package's), and reading back the input
    example is no download to show a bar for."""
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    pyfunc_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pyfunc_log.setLevel(level)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def pip_requirements() -> list[str]:
    """What a logged model needs installed: this torch, without a local tag (+cu130)."""
    return [f"torch=={torch.__version__.split('+')[0]}"]


def _delete_failed_models(tracker) -> None:
    """The attempt that failed left a logged model marked FAILED: the run keeps the one
    that was logged."""
    client = tracker.mlflow.MlflowClient(tracker.uri)
    for logged in client.search_logged_models(
        experiment_ids=[tracker.experiment_id],
        filter_string=f"source_run_id = '{tracker.run_id}'",
    ):
        if str(logged.status) == "FAILED":  # a status filter is not matched by every store
            client.delete_logged_model(logged.model_id)


def discard_failed_models(tracker) -> None:
    """The files of this run's logged models that MLflow marked FAILED (an upload cut short
    by a full disk, say) deleted from the artifact store: no truncated model.pth is left to
    load, and the space is freed. The FAILED record stays, to show the attempt."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        client = tracker.mlflow.MlflowClient(tracker.uri)
        for logged in client.search_logged_models(
            experiment_ids=[tracker.experiment_id],
            filter_string=f"source_run_id = '{tracker.run_id}'",
        ):
            if str(logged.status) == "FAILED":
                get_artifact_repository(logged.artifact_location).delete_artifacts()
    except Exception as err:  # the store itself is what failed: the error raised says so
        log.warning("Could not remove a model upload cut short: %s", type(err).__name__)
