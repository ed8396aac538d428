"""`experiment-compare`: the runs of an experiment, or the trials of a sweep, as one table.

    experiment-compare default                        # every run of the MLflow experiment
    experiment-compare 3f2a...e1 --format csv         # the runs nested under a sweep's parent run

Rows are sorted by the runs' objective (the best value of `optimized_metric`, in its
`optimized_direction`), best first; the columns are the run, its state, the objective,
the parameters that differ between the runs (those all runs share say nothing about
them) and the main metrics (test metrics, training time, epochs). `--format markdown`
(default) or `csv`; `--tracking-uri` (default: the project's store).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections import Counter

from experiment.errors import ExperimentError
from experiment.sweep.protocol import PARENT_TAG
from experiment.system.secrets import redact
from experiment.tracking.tags import PRESET_TAG

DEFAULT_STORE = "sqlite:///mlruns/mlflow.db"
# A run's best value of its first optimized metric; for a sweep's trial of several
# seeds, the mean over them.
OBJECTIVES = ("best/value", "value_mean")
MAIN_METRICS = ("best/epoch", "epochs_run", "train_time_s", "model/params")
# Params that differ between any two runs without saying anything about them.
NOT_COMPARED = ("trainer.checkpoint_dir", "trainer.resume", "trainer.resume_dir", "run_name")


class CompareError(ExperimentError):
    exit_code = 2


def runs_of(client, target: str, uri: str) -> tuple[list, str]:
    """The runs `target` names (an experiment's name or id, or a parent run's id) and a
    description of them; CompareError for neither."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(target)
    if experiment is None and target.isdigit():
        try:
            experiment = client.get_experiment(target)
        except MlflowException:
            experiment = None
    if experiment is not None:
        runs = client.search_runs([experiment.experiment_id], max_results=50_000)
        runs = [r for r in runs if r.data.tags.get(PARENT_TAG) != "true"]
        return runs, f"experiment '{experiment.name}'"
    try:
        parent = client.get_run(target)
    except MlflowException:
        raise CompareError(
            f"'{target}' is neither an MLflow experiment nor a run in {redact(uri)}. "
            "Give an experiment name (e.g. default) or a sweep's parent run id, and "
            "--tracking-uri for another store."
        ) from None
    runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=50_000,
    )
    return runs, f"the runs under {parent.info.run_name or parent.info.run_id}"


def objective_of(runs) -> tuple[str, bool]:
    """The runs' optimized metric and whether it is maximized (their most common one)."""
    metrics = Counter(_first(r.data.params.get("optimized_metric", "")) for r in runs)
    directions = Counter(_first(r.data.params.get("optimized_direction", "")) for r in runs)
    metric = metrics.most_common(1)[0][0] if metrics else ""
    direction = directions.most_common(1)[0][0] if directions else ""
    return metric or OBJECTIVES[0], direction == "maximize"


def _first(value: str) -> str:
    """The first of a list param (`['val/acc', 'model/params']`), or the value itself."""
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1].split(",")[0]
    return value.strip().strip("'\"")


def objective_value(run) -> float | None:
    return next((run.data.metrics[k] for k in OBJECTIVES if k in run.data.metrics), None)


def table(runs, short: bool = True) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the comparison, best first; `short`: numbers to 4 digits."""
    metric, maximize = objective_of(runs)
    scored = [r for r in runs if objective_value(r) is not None]
    unscored = [r for r in runs if objective_value(r) is None]
    sign = -1.0 if maximize else 1.0
    ordered = sorted(scored, key=lambda r: sign * objective_value(r)) + unscored
    differing = differing_params(ordered)
    tests = sorted({k for r in runs for k in r.data.metrics if k.startswith("test/")})
    shown = [m for m in (*tests, *MAIN_METRICS) if any(m in r.data.metrics for r in runs)]
    presets = any(PRESET_TAG in r.data.tags for r in runs)  # experiment= presets
    header = ["run", *(["preset"] if presets else []), "state", f"{metric} (best)"]
    header += [*differing, *shown]
    rows = []
    for run in ordered:
        state = run.data.tags.get("optuna.state") or run.info.status
        rows.append(
            [
                run.info.run_name or run.info.run_id,
                *([run.data.tags.get(PRESET_TAG, "")] if presets else []),
                state,
                _number(objective_value(run), short),
                *(_param(run.data.params.get(k, ""), short) for k in differing),
                *(_number(run.data.metrics.get(m), short) for m in shown),
            ]
        )
    return header, rows


def differing_params(runs) -> list[str]:
    """The params whose values are not the same in every run that has them, sorted (a
    sweep's trial run of several seeds holds only the swept ones)."""
    keys = sorted({k for r in runs for k in r.data.params if k not in NOT_COMPARED})
    return [k for k in keys if len({r.data.params[k] for r in runs if k in r.data.params}) > 1]


def _number(value, short: bool = True) -> str:
    if value is None:
        return ""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}" if short else repr(float(value))


def _param(value: str, short: bool) -> str:
    """A param as logged; a long float shortened to 4 digits where `short`."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if short and "." in value and len(value) > 8 else value


def markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def as_csv(header: list[str], rows: list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([header, *rows])
    return out.getvalue().rstrip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="experiment-compare",
        description="The runs of an MLflow experiment, or of a sweep, as one table.",
    )
    parser.add_argument("target", help="an experiment's name (or id), or a sweep's parent run id")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--tracking-uri", default=DEFAULT_STORE)
    args = parser.parse_args(argv)
    try:
        text = compare(args.target, args.tracking_uri, args.format)
    except ExperimentError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def compare(target: str, tracking_uri: str, form: str = "markdown") -> str:
    """The comparison table of `target` (see the module's doc) as text."""
    from mlflow import MlflowClient

    from experiment.tracking.tracker import absolute_uri

    uri = absolute_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not _exists(uri):
        raise CompareError(f"No MLflow store at {redact(uri)}: give --tracking-uri.")
    client = MlflowClient(uri)
    runs, what = runs_of(client, target, uri)
    if not runs:
        raise CompareError(f"{what} holds no runs to compare.")
    header, rows = table(runs, short=form == "markdown")
    return markdown(header, rows) if form == "markdown" else as_csv(header, rows)


def _exists(uri: str) -> bool:
    from pathlib import Path

    return Path(uri.removeprefix("sqlite:///")).is_file()


def cli() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    cli()
