"""`experiment=NAME`: a preset that pins every choice of one experiment, composed as Hydra
composes it, and a run of one tagged with its name, which the comparison shows."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiment.serving.compare import table
from tests.conftest import all_runs, compose_config, sqlite_uri, store_overrides, train_in_process


def test_a_preset_pins_each_choice_and_the_command_line_still_wins():
    cfg = compose_config(["experiment=mnist_tutorial"])
    assert cfg.dataset.name == "mnist" and cfg.model._target_.endswith("CNN")
    assert cfg.scheduler.schedule._target_.endswith("StepLR")
    assert (cfg.optimizer.lr, cfg.trainer.epochs, cfg.trainer.seed) == (0.05, 15, 1)
    later = compose_config(["experiment=mnist_tutorial", "trainer.epochs=3", "optimizer.lr=0.01"])
    assert (later.trainer.epochs, later.optimizer.lr) == (3, 0.01)
    assert OmegaConf.select(later, "experiment") is None  # a preset adds no key of its own


@pytest.mark.slow  # a run, in this process
def test_a_run_of_a_preset_is_tagged_with_it_and_the_comparison_shows_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["experiment=digits_mlp", "trainer.epochs=2", "tracking.log_model=false"]
    train_in_process(monkeypatch, *argv, *store_overrides(tmp_path))
    (run,) = all_runs(sqlite_uri(tmp_path))
    assert run.data.tags["experiment.preset"] == "digits_mlp"
    assert run.data.params["model._target_"] == "experiment.models.nets.MLP"
    header, rows = table([run])
    assert header[1] == "preset" and rows[0][1] == "digits_mlp"
