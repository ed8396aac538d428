"""Evaluation runs: a trained model measured on a split, recorded as a run of its own.

    experiment-eval SOURCE [--split test|val|train] [--tracking-uri URI] [--config-dir DIR]
                    [overrides ...]

SOURCE is an MLflow run id, a `models:/NAME/VERSION` or `models:/NAME@ALIAS` URI (its
version's run), or a checkpoint file (best.pt, last.pt). The run's configuration is
composed again from the overrides it logged (a checkpoint's run, where the store has it),
then the command line's overrides: they choose the data to measure on (another folder, a
split of another dataset). The model is the checkpoint's: the run's best.pt, found in its
`trainer.checkpoint_dir`. The metrics (`<split>/<name>`), the task's figure and tags that
name the source go to a NEW MLflow run in the same store and experiment; the source run is
never changed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from experiment.errors import ExperimentError
from experiment.serving.compare import DEFAULT_STORE

log = logging.getLogger("experiment")
SPLITS = ("test", "val", "train")


class EvaluationError(ExperimentError):
    """What an evaluation cannot find or use."""


@dataclass(frozen=True)
class Source:
    """What is evaluated: the checkpoint, the overrides of its run, and whence it came."""

    text: str  # as the command line gave it
    checkpoint: Path
    overrides: list[str]
    run_id: str | None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="experiment-eval",
        description="Evaluate a trained model on a split; record it as a new MLflow run.",
    )
    parser.add_argument("source", help="an MLflow run id, a models:/ URI or a checkpoint file")
    parser.add_argument("--split", choices=SPLITS, default="test", help="default: test")
    parser.add_argument("--tracking-uri", default=DEFAULT_STORE)
    parser.add_argument("--config-dir", help="a folder of your own option files, as for training")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.source.root=X")
    return parser


def find_source(text: str, client) -> Source:
    """The checkpoint and the run's overrides of `text` (see the module's docstring)."""
    import mlflow

    from experiment.training.checkpoint import BEST, Checkpoint

    path = Path(text).expanduser()
    if path.is_file():
        run_id = Checkpoint.load(path).mlflow_run_id
        known = run_id is not None and _run_or_none(client, run_id) is not None
        overrides = _overrides_of(run_id) if known else []
        return Source(text, path, overrides, run_id if known else None)
    if text.startswith("models:/"):
        run_id = _version_of(text, client).run_id
    elif _run_or_none(client, text) is not None:
        run_id = text
    else:
        raise EvaluationError(
            f"{text} is no checkpoint file, models:/ URI or run of the store "
            f"{mlflow.get_tracking_uri()}: give one of them (--tracking-uri for another store)."
        )
    folder = client.get_run(run_id).data.params.get("trainer.checkpoint_dir")
    checkpoint = Path(folder or ".") / BEST
    if not folder or not checkpoint.is_file():
        raise EvaluationError(
            f"The checkpoint of run {run_id} is not at {checkpoint}: give the checkpoint "
            "file itself as SOURCE."
        )
    return Source(text, checkpoint, _overrides_of(run_id), run_id)


def _run_or_none(client, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        return None


def _version_of(uri: str, client):
    from mlflow.exceptions import MlflowException

    name, _, rest = uri.removeprefix("models:/").partition("/")
    name, _, alias = name.partition("@")
    try:
        if alias:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, rest)
    except MlflowException as err:
        raise EvaluationError(f"{uri}: {str(err).splitlines()[0]}") from None


def _overrides_of(run_id: str) -> list[str]:
    import mlflow
    import yaml

    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/overrides.yaml")
    except Exception:  # a run without the file: the defaults, and the command line's
        return []
    return [str(o) for o in yaml.safe_load(text) or []]


def compose_for(source: Source, extra: list[str], config_dir: str | None, uri: str):
    """The source run's configuration with the command line's overrides, tracked to
    `uri`. An evaluation writes no checkpoint: the source's folder is left out, and
    `compose`'s own (never created) stands in."""
    from experiment.config.project import compose
    from experiment.serving.promote import dedupe

    own = [o for o in source.overrides if o.split("=", 1)[0] != "trainer.checkpoint_dir"]
    fixed = ["tracking.enabled=true", f"tracking.uri={uri}", "tracking.log_model=false"]
    return compose(dedupe([*own, *fixed, *extra]), config_dir=config_dir)


def evaluate(args: argparse.Namespace) -> str:
    """Measure the source on `args.split` in a new MLflow run; the run's id and metrics."""
    import mlflow

    from experiment.config.run_config import RunConfig
    from experiment.tracking.tracker import absolute_uri

    uri = absolute_uri(args.tracking_uri)
    mlflow.set_tracking_uri(uri)
    source = find_source(args.source, mlflow.MlflowClient(uri))
    extra = list(args.overrides)
    if args.split == "train":  # the training split as it is, not augmented
        extra.insert(0, "regularization.augmentation=false")
    run = RunConfig.enter(compose_for(source, extra, args.config_dir, uri))
    metrics, figures, parts, task = measure(run, source.checkpoint, args.split)
    tags = {
        "eval.source": source.text,
        "eval.split": args.split,
        "eval.checkpoint": str(source.checkpoint),
        **({"eval.source_run_id": source.run_id} if source.run_id else {}),
    }
    run_id = record(
        run,
        args.split,
        metrics,
        tags,
        lambda folder: task.plot(figures, parts.data.classes, folder),
    )
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    return f"Evaluated {source.text} on {args.split}: {shown}. MLflow run {run_id}."


def measure(run, checkpoint: Path, split: str):
    """(metrics by `<split>/<name>`, the task's figure values, the run's parts, its task)."""
    from experiment.runtime.device import autocast_dtype, resolve_device, seed_everything
    from experiment.training.builders import build_parts, build_task
    from experiment.training.checkpoint import load_checkpoint
    from experiment.training.engine import evaluate_with_figures

    device = resolve_device(run.trainer.device)
    seed_everything(run.trainer.seed, run.trainer.deterministic)
    task = build_task(run.task)
    parts = build_parts(run, device, task=task)
    try:
        parts.model.load_state_dict(load_checkpoint(checkpoint)["model"])
    except RuntimeError as err:  # another architecture, or another number of outputs
        raise EvaluationError(
            f"The checkpoint {checkpoint} does not fit the model this configuration builds "
            f"({str(err).strip().splitlines()[0]}): give the group options its run used."
        ) from None
    loader = {"test": parts.data.test, "val": parts.data.val, "train": parts.data.train}[split]
    values, figures = evaluate_with_figures(
        parts.model,
        loader,
        device=device,
        amp_dtype=autocast_dtype(run.trainer.precision, device),
        task=task,
        num_outputs=parts.data.num_outputs,
        figures=True,
    )
    return {f"{split}/{k}": v for k, v in values.items()}, figures, parts, task


def record(run, split: str, metrics: dict, tags: dict, draw) -> str:
    """A new MLflow run with the configuration's params, the metrics, the figure `draw`
    makes in a folder, and `tags`; its id."""
    import mlflow

    from experiment.tracking.tracker import build_tracker

    tracker = build_tracker(run.tracking)
    name = f"eval-{split}-{tags.get('eval.source_run_id', Path(tags['eval.source']).stem)[:8]}"
    tracker.start(run_name=name, params=run.params(), tags=tags, texts={"config.yaml": run.yaml()})
    status = "FAILED"
    try:
        tracker.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as folder:
            if draw(Path(folder)) is not None:
                mlflow.MlflowClient(tracker.uri).log_artifacts(tracker.run_id, folder, "plots")
        status = "FINISHED"
    finally:
        tracker.finish(status)
    return tracker.run_id


def main(argv: list[str] | None = None) -> int:
    from experiment.config.project import importable_from_here
    from experiment.system.console import split_streams

    args = parser().parse_args(argv)
    # Reading the source run's overrides.yaml is no download to show progress bars for.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    split_streams()
    importable_from_here()  # a user's own models and sources, by `_target_`
    try:
        print(evaluate(args))
    except ExperimentError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    return 0


def cli() -> None:
    from experiment.system.process_exit import run_then_exit

    run_then_exit(lambda: sys.exit(main()))


if __name__ == "__main__":
    cli()
