"""A trial's job config from the kept composition equals Hydra's own, full composition."""

from __future__ import annotations

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import OmegaConf

from experiment.sweep.composition import TrialComposer
from tests.conftest import CONF

FIXED = ["hparams_search=optuna", "trainer.epochs=3"]


@pytest.fixture
def loader_and_master():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", FIXED, run_mode=RunMode.MULTIRUN)
        yield loader, master


class CountingLoader:
    """The real loader, counting Hydra's full compositions."""

    def __init__(self, loader):
        self.loader, self.calls = loader, 0

    def load_sweep_config(self, master, overrides):
        self.calls += 1
        return self.loader.load_sweep_config(master, overrides)


@pytest.mark.parametrize(
    "sampled",
    [
        ["optimizer.lr=0.0123", "dataset.batch_size=64", "regularization.dropout=0.25"],
        ["model=mlp", "regularization.weight_decay=1e-05"],  # a group choice and a value
        ["regularization.dropout=0.1", "model=cnn", "optimizer.lr=0.5"],  # interleaved
        ["optimizer=sgd", "optimizer.lr=0.01", "optimizer.momentum=0.8"],  # a group's own key
        ["trainer.seed=3", "run_name=null"],
        ["trainer.checkpoint_dir=/tmp/elsewhere"],  # a key that resolves only in a job
    ],
)
def test_a_trials_job_config_is_the_one_hydra_composes(loader_and_master, sampled):
    loader, master = loader_and_master
    counting = CountingLoader(loader)
    composer = TrialComposer(counting, master, FIXED)
    overrides = [*FIXED, *sampled]
    fast = composer.compose(overrides)
    again = composer.compose([*FIXED, *sampled[:-1], sampled[-1]])
    full = loader.load_sweep_config(master, overrides)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(full)  # the hydra node included
    app = {k: v for k, v in OmegaConf.to_container(full, resolve=False).items() if k != "hydra"}
    fast_app = OmegaConf.to_container(fast, resolve=False)
    assert {k: v for k, v in fast_app.items() if k != "hydra"} == app
    assert OmegaConf.to_yaml(again) == OmegaConf.to_yaml(full)
    groups = sum(1 for o in sampled if o.split("=")[0] in ("model", "optimizer"))
    assert counting.calls == 1 + (1 if groups else 0)  # the fixed part, a group choice: once


def test_what_the_kept_composition_cannot_apply_goes_through_hydra(loader_and_master):
    loader, master = loader_and_master
    counting = CountingLoader(loader)
    composer = TrialComposer(counting, master, FIXED)
    # A key the config does not have: Hydra's own error.
    with pytest.raises(ConfigCompositionException, match="optimizer.nope"):
        composer.compose([*FIXED, "optimizer.nope=1"])
    # An addition and overrides that do not start with the fixed part: composed in full.
    for overrides in ([*FIXED, "+trainer.extra=1"], ["trainer.epochs=5", "optimizer.lr=0.1"]):
        before = counting.calls
        fast = composer.compose(overrides)
        assert counting.calls == before + 1
        full = loader.load_sweep_config(master, overrides)
        assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(full)
