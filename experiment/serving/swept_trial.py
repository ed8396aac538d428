"""A finished sweep's trial, found again: its study, its MLflow runs and its configuration.

`experiment-promote` starts here. A sweep is named by its study (name and storage) or by
its MLflow parent run (whose tags name the study); the trial is the best one by default.
Its configuration is recomposed from the overrides its run recorded and checked against
the config.yaml that run logged, so the retrained model is the trial's configuration and
not a near one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from experiment.errors import ExperimentError
from experiment.sweep.protocol import DEFAULT_STORAGE as DEFAULT_STUDIES
from experiment.sweep.protocol import PARENT_TAG
from experiment.system.secrets import redact


class PromoteError(ExperimentError):
    """A sweep, trial or name that cannot be promoted: one line, exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class Sweep:
    """A study and the MLflow parent run its trials are nested under."""

    study_name: str
    storage: str
    parent_run_id: str
    experiment_id: str


@dataclass(frozen=True)
class SweptTrial:
    sweep: Sweep
    number: int
    value: float | list[float]  # the trial's validation value (a mean over seeds with repeats)
    run_id: str  # the MLflow run holding the trial's config (a seed's, with repeats)
    best_epochs: int  # epochs up to the trial's best one (the mean over its seeds)
    overrides: list[str]  # what composed the trial's configuration
    config_yaml: str  # the resolved configuration the trial trained (its first run's)
    folds: int | None = None  # the trial's cross-validation folds (dataset.folds), or None


def find_sweep(client, *, study: str | None, storage: str | None, parent_run: str | None) -> Sweep:
    """The sweep named by its parent run, or by its study's name and storage."""
    from mlflow.exceptions import MlflowException

    if parent_run is not None:
        try:
            run = client.get_run(parent_run)
        except MlflowException:
            raise PromoteError(
                f"No MLflow run {parent_run} in this store: give a sweep's parent run id "
                "(the run named sweep-<study>), and --tracking-uri for another store."
            ) from None
        tags = run.data.tags
        if tags.get(PARENT_TAG) != "true":
            raise PromoteError(
                f"MLflow run {parent_run} ({run.info.run_name}) is not a sweep's parent run: "
                "give the run named sweep-<study>, or --study and --storage."
            )
        storage = storage or tags.get("optuna.storage", "")
        if "***" in storage or storage in ("", "in-memory"):
            raise PromoteError(
                f"The parent run does not say where its study is ({storage or 'no storage'}): "
                "give --storage URL (with its password)."
            )
        return Sweep(tags["optuna.study_name"], storage, run.info.run_id, run.info.experiment_id)
    if study is None:
        raise PromoteError("Name the sweep: --study NAME (and --storage URL), or --parent-run ID.")
    storage = storage or DEFAULT_STUDIES
    open_study(study, storage)  # a study that is not there is named as such first
    found = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{PARENT_TAG}` = 'true' and tags.`optuna.study_name` = '{study}'",
        max_results=1,
    )
    if not found:
        raise PromoteError(
            f"No sweep of study '{study}' in this MLflow store (no parent run "
            f"sweep-{study}): give --tracking-uri of the store the sweep tracked to."
        )
    return Sweep(study, storage, found[0].info.run_id, found[0].info.experiment_id)


def open_study(study_name: str, storage: str):
    """The Optuna study; PromoteError for a storage or study that is not there (a SQLite
    file is not created by looking)."""
    import optuna

    if storage.startswith("sqlite:///"):
        path = Path(storage.removeprefix("sqlite:///"))
        if not path.is_file():
            raise PromoteError(
                f"No Optuna storage at {path.resolve()}: give --storage URL of the sweep "
                "(hydra.sweeper.storage)."
            )
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise PromoteError(
            f"No study '{study_name}' in {redact(storage)}; it holds: "
            f"{', '.join(names) or 'no studies'}."
        ) from None
    except Exception as err:  # a URL that does not open: say which and why
        raise PromoteError(
            f"Cannot open the Optuna storage {redact(storage)}: {type(err).__name__}: "
            f"{redact(str(err)).splitlines()[0]}"
        ) from None


def choose_trial(study, number: int | None):
    """The trial to promote: `number`, or the best (for several objectives the user names
    one of the Pareto front). Only a complete trial."""
    from optuna.trial import TrialState

    several = len(study.directions) > 1
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise PromoteError(f"Study '{study.study_name}' has no complete trial to promote.")
    front = sorted(t.number for t in study.best_trials) if several else []
    if number is None:
        if several:
            raise PromoteError(
                f"Study '{study.study_name}' has {len(study.directions)} objectives: name one "
                f"trial of its Pareto front with --trial N (front: {_numbers(front)})."
            )
        return study.best_trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise PromoteError(
            f"Study '{study.study_name}' has no trial {number} (trials 0..{len(trials) - 1})."
        )
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise PromoteError(
            f"Trial {number} of study '{study.study_name}' is {trial.state.name}, not "
            f"complete: promote a complete trial ({_numbers(t.number for t in complete)})."
        )
    if several and number not in front:
        raise PromoteError(
            f"Trial {number} is not on the Pareto front of study '{study.study_name}': "
            f"name one of {_numbers(front)}."
        )
    return trial


def _numbers(numbers) -> str:
    numbers = list(numbers)
    shown = ", ".join(map(str, numbers[:20]))
    return shown + (f" and {len(numbers) - 20} more" if len(numbers) > 20 else "")


def describe_trial(client, sweep: Sweep, trial) -> SweptTrial:
    """What a promote needs of the trial's MLflow runs: its config and its best epoch."""
    runs = client.search_runs(
        [sweep.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}' "
        f"and tags.`optuna.trial` = '{trial.number}'",
        max_results=100,
    )
    if not runs:
        raise PromoteError(
            f"Trial {trial.number} of study '{sweep.study_name}' has no MLflow run under "
            f"the sweep's parent run {sweep.parent_run_id}: it was not tracked."
        )
    trained = _trained_runs(client, sweep, runs)
    if not trained:
        raise PromoteError(f"Trial {trial.number}'s MLflow runs hold no finished training.")
    first = trained[0]
    import mlflow

    uri = f"runs:/{first.info.run_id}"
    try:
        config_yaml = mlflow.artifacts.load_text(f"{uri}/config.yaml")
        overrides_text = mlflow.artifacts.load_text(f"{uri}/overrides.yaml")
    except Exception as err:
        raise PromoteError(
            f"Trial {trial.number}'s run {first.info.run_id} has no readable config.yaml / "
            f"overrides.yaml ({type(err).__name__}): its configuration is unknown."
        ) from None
    import yaml

    epochs = [int(r.data.metrics["best/epoch"]) + 1 for r in trained]
    dataset = (yaml.safe_load(config_yaml) or {}).get("dataset") or {}
    return SweptTrial(
        sweep=sweep,
        number=trial.number,
        value=trial.values if len(trial.values) > 1 else trial.value,
        run_id=first.info.run_id,
        best_epochs=round(statistics.mean(epochs)),
        overrides=[str(o) for o in (yaml.safe_load(overrides_text) or [])],
        config_yaml=config_yaml,
        folds=dataset.get("folds"),
    )


def _unit_order(run) -> tuple[int, int]:
    return int(run.data.tags.get("optuna.repeat", 0)), int(run.data.tags.get("optuna.fold", 0))


def _trained_runs(client, sweep: Sweep, runs) -> list:
    """The runs that trained the trial, first seed's first fold first: the trial's own
    run, or with repeats or folds the runs nested under the trial's run."""
    done = [r for r in runs if "best/epoch" in r.data.metrics]
    if done:
        return sorted(done, key=_unit_order)
    seeds = client.search_runs(
        [sweep.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{runs[0].info.run_id}'",
        max_results=1000,
    )
    done = [r for r in seeds if "best/epoch" in r.data.metrics]
    return sorted(done, key=_unit_order)
