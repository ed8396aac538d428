"""The MLflow Model Registry: a promoted model as one new version, aliased `champion`.

A promote registers exactly one version and moves the alias to it; earlier versions
stay (an earlier champion keeps its version number and loses only the alias).
"""

from __future__ import annotations

import re

from experiment.serving.swept_trial import PromoteError

ALIAS = "champion"
# MLflow refuses '/' and ':' in names; '@' and '#' would break `models:/NAME@ALIAS`
# URIs, and spaces need quoting everywhere a URI is typed.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def check_name(name: str) -> str:
    """A registry name users can put in `models:/NAME@champion`; PromoteError otherwise."""
    if not _NAME.fullmatch(name or "") or ".." in name:
        raise PromoteError(
            f"Invalid registered model name {name!r}: use letters, digits, '_', '-' and "
            "'.' (starting with a letter or digit), e.g. --name digits-cnn."
        )
    return name


def register(client, name: str, run_id: str, tags: dict[str, str], description: str):
    """One new version of `name` from the run's logged model, tagged and described, with
    the alias moved to it; returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(
            name, description="Promoted from sweeps by experiment-promote."
        )
    model_uri = logged_model_uri(client, run_id)
    version = client.create_model_version(
        name, model_uri, run_id=run_id, tags=tags, description=description
    )
    client.set_registered_model_alias(name, ALIAS, version.version)
    return version


def logged_model_uri(client, run_id: str) -> str:
    """The URI of the model a run logged (MLflow 3 keeps it as its own entity)."""
    run = client.get_run(run_id)
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
    )
    if not models:
        raise PromoteError(f"Run {run_id} logged no model (was tracking.log_model off?).")
    return models[0].model_uri
