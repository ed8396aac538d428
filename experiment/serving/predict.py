"""`experiment-predict`: a logged or registered model's predictions for files, as CSV.

    experiment-predict models:/digits@champion photos/            # a folder of images
    experiment-predict runs:/RUN_ID/model features.csv --out predictions.csv

INPUTS is an image, a folder of images (searched recursively, in sorted order), a .npy
array or a .csv of feature rows (prediction_inputs.py); for a model of several inputs,
an .npz holding an array under each input's name. One CSV row per input: `input`
(the file, or the row index), then `class` and `probability` (the most likely class and
its probability), one probability column per label for a multi-label model, or one
column per target for regression (a column per value of each prediction, named after
it, for a model whose predictions are several). The model carries its preprocessing
(deployable.py), so the predictions are those of the run's own evaluation. Bad input is
one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

import numpy as np

from experiment.config.project import importable_from_here
from experiment.errors import ExperimentError
from experiment.serving.compare import DEFAULT_STORE
from experiment.serving.prediction_inputs import ModelInput, read, read_named

BATCH = 1024  # samples per call of the model: memory stays flat for a large folder


class PredictError(ExperimentError):
    exit_code = 2


def load(model_uri: str):
    """The pyfunc model and its metadata; PredictError for a URI that names none, or a
    model logged without the metadata this command reads."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PredictError(f"Cannot load model {model_uri}: {first}") from None
    metadata = model.metadata.metadata or {}
    if "experiment.input_shape" not in metadata and "experiment.inputs" not in metadata:
        raise PredictError(
            f"Model {model_uri} does not say what it takes (no experiment.input_shape in its "
            "metadata): it was not logged by this package's runs."
        )
    return model, metadata


def predict(model, samples):
    """The model's predictions for `samples` (an array, or a dict of named arrays), in
    batches; an array, or a dict of arrays for a model of several predictions."""
    named = isinstance(samples, dict)
    count = len(next(iter(samples.values()))) if named else len(samples)
    parts = []
    for start in range(0, count, BATCH):
        part = slice(start, start + BATCH)
        batch = {k: v[part] for k, v in samples.items()} if named else samples[part]
        parts.append(model.predict(batch))
    if isinstance(parts[0], dict):
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    return np.concatenate([np.asarray(p) for p in parts])


def rows(names: list[str], outputs, metadata: dict) -> tuple[list[str], list[list]]:
    """(header, rows) of the predictions CSV."""
    if isinstance(outputs, dict):  # several predictions: a column per value of each
        columns, blocks = [], []
        for key, values in outputs.items():
            block = np.asarray(values).reshape(len(names), -1)
            width = block.shape[1]
            columns += [key] if width == 1 else [f"{key}_{i}" for i in range(width)]
            blocks.append(block)
        table = np.concatenate(blocks, axis=1)
        return ["input", *columns], [[n, *map(float, r)] for n, r in zip(names, table, strict=True)]
    outputs = outputs.reshape(len(names), -1)
    if metadata.get("experiment.task") == "classification" and not metadata.get(
        "experiment.multi_label"
    ):
        best = outputs.argmax(1)
        header = ["input", "class", "probability"]
        return header, [
            [n, int(c), float(p)] for n, c, p in zip(names, best, outputs.max(1), strict=True)
        ]
    if metadata.get("experiment.multi_label"):
        labels = metadata.get("experiment.classes") or range(outputs.shape[1])
        columns = [f"probability_{label}" for label in labels]
    else:
        width = outputs.shape[1]
        columns = ["target"] if width == 1 else [f"target_{i}" for i in range(width)]
    table = [[n, *map(float, row)] for n, row in zip(names, outputs, strict=True)]
    return ["input", *columns], table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="experiment-predict",
        description="Predictions of a logged or registered model for images or feature rows.",
    )
    parser.add_argument("model_uri", help="e.g. models:/digits@champion or runs:/RUN_ID/model")
    parser.add_argument("inputs", type=Path, help="an image, a folder of images, a .npy or a .csv")
    parser.add_argument("--out", type=Path, help="the CSV file to write (default: stdout)")
    parser.add_argument("--tracking-uri", default=DEFAULT_STORE)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # A pickled model (or one of several inputs) loads where its classes import: a
    # project's own modules, from the folder the command runs in.
    importable_from_here()
    try:
        header, table = run(args)
    except ExperimentError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([header, *table])
    finally:
        if args.out:
            out.close()
    return 0


def run(args: argparse.Namespace) -> tuple[list[str], list[list]]:
    import mlflow

    from experiment.tracking.tracker import absolute_uri

    uri = absolute_uri(args.tracking_uri)
    store = Path(uri.removeprefix("sqlite:///"))
    in_store = args.model_uri.startswith(("models:/", "runs:/"))
    if in_store and uri.startswith("sqlite:///") and not store.is_file():
        raise PredictError(f"No MLflow store at {store}: give --tracking-uri.")
    mlflow.set_tracking_uri(uri)
    model, metadata = load(args.model_uri)
    if metadata.get("experiment.inputs"):  # several named inputs
        names, named = read_named(args.inputs, metadata["experiment.inputs"])
        return rows(names, predict(model, named), metadata)
    wanted = ModelInput(
        tuple(metadata["experiment.input_shape"]), metadata.get("experiment.input_dtype", "float32")
    )
    names, samples = read(args.inputs, wanted)
    by_name = metadata.get("experiment.input_names")  # a pyfunc model of named arrays
    return rows(names, predict(model, {by_name[0]: samples} if by_name else samples), metadata)


def cli() -> None:
    from experiment.system.process_exit import run_then_exit

    run_then_exit(lambda: sys.exit(main()))


if __name__ == "__main__":
    cli()
