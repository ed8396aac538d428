"""Tracking helpers: flattened params and redacted secrets."""

from __future__ import annotations

from experiment.run_config import RunConfig, flatten
from experiment.secrets import redact
from experiment.tracking import absolute_uri


def test_flatten_gives_dotted_keys_and_keeps_lists_whole():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": 1, "a.c": [1, 2], "d": None}


def test_passwords_in_urls_are_redacted():
    url = "postgresql://alice:s3cret@db.example:5432/optuna"
    assert redact(url) == "postgresql://alice:***@db.example:5432/optuna"
    assert redact("sqlite:///mlruns/mlflow.db") == "sqlite:///mlruns/mlflow.db"
    assert "s3cret" not in redact(f"could not connect to {url}: refused")


def test_config_params_never_carry_a_password():
    resolved = {"tracking": {"uri": "http://bob:hunter2@mlflow:5000"}, "optimizer": {"lr": 0.1}}
    params = RunConfig(config=None, objectives=(), resolved=resolved).params()
    assert params == {"tracking.uri": "http://bob:***@mlflow:5000", "optimizer.lr": "0.1"}


def test_relative_sqlite_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert (tmp_path / "runs").is_dir()
    assert absolute_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
