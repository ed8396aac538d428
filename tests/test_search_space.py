"""The official Optuna sweeper's `params:` syntax maps to the right distributions."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from experiment.errors import SearchSpaceError
from experiment.sweep.search_space import build


def space(**params):
    return build(params, [])[0]


def test_interval_is_a_float_range():
    assert space(x="interval(0.1, 1)")["x"] == FloatDistribution(0.1, 1.0)


def test_int_interval_is_an_int_range_with_both_ends():
    assert space(x="int(interval(1, 10))")["x"] == IntDistribution(1, 10)


def test_log_tag_sets_log_scale():
    assert space(x="tag(log, interval(1e-4, 1e-1))")["x"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert space(x="tag(log, int(interval(1, 100)))")["x"] == IntDistribution(1, 100, log=True)


def test_range_excludes_its_upper_bound_like_hydra():
    assert space(x="range(1, 10)")["x"] == IntDistribution(1, 9)
    assert space(x="range(0, 10, 3)")["x"] == IntDistribution(0, 9, step=3)
    assert space(x="range(0, 9, 3)")["x"] == IntDistribution(0, 6, step=3)
    float_range = space(x="range(0.1, 1.0, 0.2)")["x"]
    assert isinstance(float_range, FloatDistribution) and float_range.high == pytest.approx(0.9)


def test_choice_and_comma_lists_are_categorical():
    assert space(x="choice(32, 64, 128)")["x"] == CategoricalDistribution([32, 64, 128])
    assert space(model="mlp,cnn")["model"] == CategoricalDistribution(["mlp", "cnn"])


def test_command_line_sweeps_join_and_plain_values_pass_through():
    params = {"optimizer.lr": "interval(0.001, 0.1)", "trainer.epochs": "3"}
    found, fixed = build(params, ["dataset.batch_size=16,32", "trainer.seed=4"])
    assert set(found) == {"optimizer.lr", "dataset.batch_size"}
    assert fixed == ["trainer.epochs=3", "trainer.seed=4"]
    # A command-line value replaces a params entry of the same key.
    found, fixed = build(params, ["optimizer.lr=0.5"])
    assert "optimizer.lr" not in found and "optimizer.lr=0.5" in fixed


@pytest.mark.parametrize(
    "entry,message",
    [
        ("interval(1, 0)", "low < high"),
        ("tag(log, interval(0, 1))", "log scale needs low > 0"),
        ("range(5, 1)", "empty"),
        ("interval(0.1", "Cannot parse"),
    ],
)
def test_bad_search_space_entries_are_named(entry, message):
    with pytest.raises(SearchSpaceError, match=message):
        space(x=entry)


def test_shuffled_range_is_categorical_as_in_the_official_plugin():
    assert space(x="shuffle(range(1, 3))")["x"] == CategoricalDistribution([1, 2])


def test_a_grid_lists_every_choice_and_range_value():
    from experiment.sweep.search_space import grid

    assert grid(space(a="choice(x, y)", b="range(0, 6, 2)", c="range(0.5, 1.5, 0.5)")) == {
        "a": ["x", "y"],
        "b": [0, 2, 4],
        "c": [0.5, 1.0],
    }
    with pytest.raises(SearchSpaceError, match="lr: a grid search needs choice"):
        grid(space(lr="interval(0.0, 1.0)"))


def test_the_search_space_line_keeps_bounds_equal_to_zero():
    from experiment.sweep.search_space import describe

    text = describe(space(x="interval(0.0, 0.5)")["x"])
    assert "'low': 0.0" in text and "'high': 0.5" in text and "log" not in text
