"""The docs site's generated page: the configuration reference is the schema's, current
and complete."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiment.config import reference
from tests.conftest import ROOT

PAGE = ROOT / "docs" / "reference" / "configuration.md"


def test_the_configuration_reference_is_the_schemas():
    assert PAGE.read_text() == reference.page(), (
        "docs/reference/configuration.md is out of date: run `make docs-reference`"
    )


@pytest.mark.parametrize(
    "overrides",
    [[], ["model=mlp", "scheduler=plateau"], ["task=regression", "dataset=synthetic_regression"]],
)
def test_every_key_of_a_composed_run_is_in_the_reference(overrides, tmp_path):
    import experiment

    cfg = experiment.compose([*overrides, f"trainer.checkpoint_dir={tmp_path}"])
    keys = _leaves(OmegaConf.to_container(cfg, resolve=False))
    text = PAGE.read_text()
    missing = [key for key in keys if f"`{key}`" not in text]
    assert not missing


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        return [key for name, value in node.items() for key in _leaves(value, f"{prefix}{name}.")]
    return [prefix.rstrip(".")]
