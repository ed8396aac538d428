"""Tracking helpers: flattened params and redacted secrets."""

from __future__ import annotations

import os

import pytest

from experiment.config.run_config import RunConfig, flatten, overrides_yaml
from experiment.system.secrets import ENV_PREFIX, is_secret_key, redact, redact_tree
from experiment.tracking.tracker import absolute_uri
from tests.conftest import compose_config


def test_flatten_gives_dotted_keys_and_keeps_lists_whole():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


def test_passwords_in_urls_are_redacted():
    url = "postgresql://alice:s3cret@db.example:5432/optuna"
    assert redact(url) == "postgresql://alice:***@db.example:5432/optuna"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
    assert "s3cret" not in redact(f"could not connect to {url}: refused")


def test_secrets_are_masked_by_url_and_by_key_name_and_interpolations_are_kept():
    text = "tracking.token=abc1 +dataset.hf_token=abc2 tokenizer=bert max_tokens=5 password: abc3"
    assert redact(text) == (
        "tracking.token=*** +dataset.hf_token=*** tokenizer=bert max_tokens=5 password: ***"
    )
    assert redact("token=${oc.env:HF_TOKEN}") == "token=${oc.env:HF_TOKEN}"
    assert redact("pg://u:${oc.env:PW}@h") == "pg://u:${oc.env:PW}@h"
    tree = {
        "source": {"api_key": 12345, "secret": "abc4", "access_token": "${oc.env:T}"},
        "urls": ["http://u:abc5@h", "sqlite:///a.db"],
        "tokenizer": "bert",
    }
    assert redact_tree(tree) == {
        "source": {"api_key": "***", "secret": "***", "access_token": "${oc.env:T}"},
        "urls": ["http://u:***@h", "sqlite:///a.db"],
        "tokenizer": "bert",
    }
    assert [is_secret_key(k) for k in ("db_password", "PASSWD", "tokenizer", "token_count")] == [
        True,
        True,
        False,
        False,
    ]


def test_a_sealed_config_resolves_to_its_secrets_and_is_written_without_them(monkeypatch):
    from omegaconf import OmegaConf

    from experiment.config.secret_sealing import seal_config

    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(os, "environ", os.environ.copy())  # what sealing sets stays here
    cfg = OmegaConf.create(
        {
            "tracking": {"uri": "http://bob:pw-one@mlflow:5000", "token": "pw-two"},
            "hydra": {"overrides": {"task": ["tracking.uri=http://bob:pw-one@mlflow:5000"]}},
            "kept": "${oc.env:HOME}",
            "kept_in_url": "http://bob:${oc.env:HOME}@mlflow:5000",
        }
    )
    OmegaConf.set_readonly(cfg.hydra, True)  # as Hydra leaves it
    seal_config(cfg)
    written = OmegaConf.to_yaml(cfg)  # what Hydra writes to .hydra/: unresolved
    assert "pw-one" not in written and "pw-two" not in written
    assert "${oc.env:HOME}" in written and "bob:${oc.env:HOME}@" in written
    seal_config(cfg)  # sealing twice (a sweep's trial, composed from sealed overrides)
    assert OmegaConf.to_yaml(cfg) == written
    assert cfg.tracking.uri == "http://bob:pw-one@mlflow:5000"  # the live process's value
    assert cfg.tracking.token == "pw-two"
    assert cfg.hydra.overrides.task[0] == "tracking.uri=http://bob:pw-one@mlflow:5000"
    # One variable per secret, the same one for the same secret: a child process started
    # with this environment resolves the same config.
    assert sorted(v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)) == [
        "pw-one",
        "pw-two",
    ]
    assert redact(written).count("***") == 3


def test_what_a_run_writes_of_its_config_never_carries_a_password():
    def entered(password):
        uri = f"tracking.uri=http://bob:{password}@mlflow:5000"
        return RunConfig.enter(compose_config([uri, "tracking.experiment_name=x"]))

    run = entered("hunter2")
    assert run.params()["tracking.uri"] == "http://bob:***@mlflow:5000"
    assert run.resolved["tracking"]["uri"] == "http://bob:***@mlflow:5000"  # checkpoints
    assert "hunter2" not in run.yaml()
    assert run.config.tracking.uri == "http://bob:hunter2@mlflow:5000"  # what connects
    assert entered("rotated").fingerprint == run.fingerprint  # a new password: the same run
    assert overrides_yaml(["tracking.uri=http://bob:hunter2@h", "a.token=x1"]) == (
        "- tracking.uri=http://bob:***@h\n- a.token=***\n"
    )


def test_relative_sqlite_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert (tmp_path / "runs").is_dir()
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_new_stores_are_copied_from_a_template_and_point_at_their_own_folder(tmp_path, monkeypatch):
    import mlflow

    from experiment.system.sqlite_files import template_folder
    from experiment.tracking.tracker import Tracker

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        Tracker(f"sqlite:///{tmp_path / name / 'mlflow.db'}", None, "runs")
    assert [p.name for p in template_folder().glob("*.db")] == [f"mlflow-{mlflow.__version__}.db"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}")
    default = client.get_experiment("0")
    assert default.artifact_location == (tmp_path / "second" / "mlruns").as_uri()
    run = client.create_run(client.get_experiment_by_name("runs").experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.5)
    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}


def test_the_run_points_to_the_ui_that_exists_where_it_runs(tmp_path, monkeypatch):
    """`make ui` only in the project's own checkout; elsewhere (a project of one's own)
    the MLflow command that opens the same store."""
    from experiment.tracking.tracker import Tracker
    from tests.conftest import ROOT

    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", None, "runs")
    elsewhere = tracker.describe()
    assert f"`mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlflow.db'}`" in elsewhere
    assert "make ui" not in elsewhere
    monkeypatch.chdir(ROOT)
    assert "Open the UI with `make ui` (or `mlflow ui --backend-store-uri" in tracker.describe()


def test_an_unwritable_template_cache_only_costs_the_speed_up(tmp_path, monkeypatch):
    from experiment.tracking.tracker import Tracker

    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", None, "runs")
    assert tracker.experiment_id and (tmp_path / "mlflow.db").exists()
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))


def test_epoch_metrics_are_sent_in_batches_and_all_of_them_by_the_runs_end(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from experiment.tracking import tracker as tracking
    from tests.conftest import sqlite_uri, tracking_overrides

    tracking_overrides(tmp_path)  # an empty store
    tracker = tracking.Tracker(sqlite_uri(tmp_path), str(tmp_path / "artifacts"), "batches")
    tracker.start(run_name="r", params={}, tags={}, texts={})
    client = MlflowClient(sqlite_uri(tmp_path))

    def steps() -> list[int]:
        return [m.step for m in client.get_metric_history(tracker.run_id, "val/loss")]

    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 3600.0)
    for epoch in range(3):
        tracker.log_epoch(epoch, {"val/loss": 1.0 / (epoch + 1), "lr": 0.1})
    assert steps() == []  # held back: one write for several epochs
    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 0.0)
    tracker.log_epoch(3, {"val/loss": 0.2, "lr": 0.1})
    assert steps() == [0, 1, 2, 3]  # the interval passed: everything so far, at once
    monkeypatch.setattr(tracking, "FLUSH_SECONDS", 3600.0)
    tracker.log_epoch(4, {"val/loss": 0.1, "lr": 0.1})
    tracker.finish("FAILED")  # a run that ends, however it ends, sends what it holds
    assert steps() == [0, 1, 2, 3, 4]
    assert client.get_run(tracker.run_id).info.status == "FAILED"


def test_a_store_or_artifact_root_that_cannot_serve_is_refused_before_any_experiment(tmp_path):
    from experiment.errors import ConfigValueError, TrackingError
    from experiment.tracking.tracker import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ConfigValueError, match="tracking.artifact_root.*a folder this process"):
        Tracker(uri, "/proc/no-such-folder", "first")
    assert not (tmp_path / "mlflow.db").exists()  # no experiment made with that location

    Tracker(uri, str(tmp_path / "artifacts"), "first")
    with pytest.raises(ConfigValueError) as moved:
        Tracker(uri, str(tmp_path / "elsewhere"), "first")
    assert "MLflow fixes it when it creates an experiment" in str(moved.value)
    assert (tmp_path / "artifacts").as_uri() in str(moved.value)
    Tracker(uri, str(tmp_path / "elsewhere"), "second")  # a new experiment: any folder

    damaged = tmp_path / "damaged.db"
    damaged.write_bytes((tmp_path / "mlflow.db").read_bytes()[:5000])
    with pytest.raises(TrackingError, match=f"The MLflow store file {damaged} is damaged"):
        Tracker(f"sqlite:///{damaged}", None, "first")
    assert damaged.stat().st_size == 5000  # left as it is
