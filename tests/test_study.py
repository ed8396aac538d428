"""Samplers and pruners by name or `_target_` node; seeding; storage folders."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf

from experiment.errors import SweepError
from hydra_plugins.experiment_optuna_sweeper.study import make_pruner, make_sampler, make_storage


def first_suggestions(sampler, n=5):
    study = optuna.create_study(sampler=sampler)
    return [study.ask().suggest_float("x", 0, 1) for _ in range(n)]


@pytest.mark.parametrize("name", ["tpe", "random", "qmc"])
def test_named_samplers_are_seeded(name):
    assert first_suggestions(make_sampler(name, 7)) == first_suggestions(make_sampler(name, 7))
    assert first_suggestions(make_sampler(name, 7)) != first_suggestions(make_sampler(name, 8))


@pytest.mark.parametrize(
    "name,cls",
    [
        ("median", optuna.pruners.MedianPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_named_pruners(name, cls):
    assert isinstance(make_pruner(name), cls)


def test_target_nodes_and_ready_objects_are_accepted():
    node = OmegaConf.create({"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 3})
    assert make_pruner(node)._n_warmup_steps == 3
    ready = optuna.samplers.RandomSampler()
    assert make_sampler(ready, 0) is ready


def test_unknown_names_list_the_choices():
    with pytest.raises(SweepError, match="median, hyperband, successive_halving, none"):
        make_pruner("sometimes")


def test_sqlite_storage_creates_its_folder(tmp_path):
    make_storage(f"sqlite:///{tmp_path / 'deep' / 'er' / 'optuna.db'}")
    assert (tmp_path / "deep" / "er").is_dir()
    assert make_storage(None) is None
