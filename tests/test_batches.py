"""Batches of any structure: inputs as a tuple (model(*inputs)) or a dict (model(**inputs)),
dict items with dataset.target_key, a collate_fn of one's own; on both data paths (arrays
held on the device, Datasets through a DataLoader), split between ranks, logged as a
model that takes its inputs by name and predicts through experiment-predict."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
import torch

import experiment
from experiment.config.run_config import RunConfig
from experiment.data.batches import Layout, call_model
from experiment.data.loaders import HostBatches, build_loaders
from experiment.data.sources import as_splits, layout_of
from experiment.errors import DataError
from experiment.runtime.distributed import Ranks
from experiment.serving import predict
from experiment.training.builders import build_collate_fn, build_parts, build_task, load_source
from tests.conftest import all_runs, sqlite_uri, store_overrides
from tests.services import model_server

CPU = torch.device("cpu")
APP = "tests.apps.structured"

# (the dataset option's YAML, the loader it takes, the form its batches' inputs have)
FORMS = {
    "tuple pairs in memory": (f"source:\n  _target_: {APP}.tuple_pairs\n", "DeviceLoader", tuple),
    "dict columns in memory": (
        f"source:\n  _target_: {APP}.dict_columns\n  extra: true\n"
        "target_key: label\ninput_keys: [left, right]\n",
        "DeviceLoader",
        dict,
    ),
    "dict items with a collate_fn": (
        f"source:\n  _target_: {APP}.dataset_items\ntarget_key: label\ncollate_fn: {APP}.stacked\n",
        "HostLoader",
        dict,
    ),
    "tuple items, default collate": (
        f"source:\n  _target_: {APP}.dataset_items\n  form: tuple\n",
        "HostLoader",
        tuple,
    ),
}


def _config(tmp_path, form: str, *overrides: str):
    (tmp_path / "conf" / "dataset").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "model").mkdir(parents=True, exist_ok=True)
    (tmp_path / "conf" / "dataset" / "pairs.yaml").write_text(FORMS[form][0] + "batch_size: 32\n")
    (tmp_path / "conf" / "model" / "two.yaml").write_text(f"_target_: {APP}.TwoInputs\n")
    return experiment.compose(
        [
            "dataset=pairs",
            "model=two",
            "trainer.epochs=6",
            "trainer.progress=quiet",
            "optimizer.lr=0.01",
            f"trainer.checkpoint_dir={tmp_path / 'checkpoints'}",
            *overrides,
        ],
        config_dir=str(tmp_path / "conf"),
    )


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_of_batch_trains_on_its_data_path(form, tmp_path):
    cfg = _config(tmp_path, form, "tracking=none")
    parts = build_parts(cfg, CPU)
    _, loader, kind = FORMS[form]
    assert type(parts.data.train).__name__ == loader
    inputs, targets = next(iter(parts.data.train))
    assert isinstance(inputs, kind) and len(inputs) == 2  # "ignored" was left out
    if kind is dict:
        assert set(inputs) == {"left", "right"}
    assert targets.dtype == torch.int64 and parts.data.input_shape is None
    assert parts.data.num_outputs == 2  # the labels 0 and 1, read through the layout
    assert experiment.run(cfg) > 0.8  # val/acc: the model saw both inputs


@pytest.mark.slow  # a model server
def test_a_model_of_two_inputs_is_logged_to_take_them_by_name(tmp_path, capsys):
    cfg = _config(tmp_path, "dict items with a collate_fn", *store_overrides(tmp_path))
    experiment.run(cfg)
    (finished,) = all_runs(sqlite_uri(tmp_path))
    assert finished.info.status == "FINISHED"
    uri = f"runs:/{finished.info.run_id}/model"
    import mlflow

    model = mlflow.pyfunc.load_model(uri)
    metadata = model.metadata.metadata
    assert metadata["experiment.input_form"] == "dict"
    assert [i["name"] for i in metadata["experiment.inputs"]] == ["left", "right"]
    left = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    right = np.zeros((5, 3), dtype=np.float32)
    probabilities = model.predict({"left": left, "right": right})
    assert probabilities.shape == (5, 2)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    # The same through experiment-predict, from an .npz of named arrays.
    np.savez(tmp_path / "inputs.npz", left=left, right=right)
    code = predict.main([uri, str(tmp_path / "inputs.npz"), "--tracking-uri", sqlite_uri(tmp_path)])
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and header == "input,class,probability" and len(rows) == 5
    best = [float(r.split(",")[2]) for r in rows]
    np.testing.assert_allclose(best, probabilities.max(1), rtol=1e-5)
    # Served over HTTP: named inputs in, the same probabilities out.
    with model_server(tmp_path / "serve", uri, sqlite_uri(tmp_path)) as server:
        body = json.dumps({"inputs": {"left": left.tolist(), "right": right.tolist()}}).encode()
        request = urllib.request.Request(
            server.url + "/invocations", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = np.asarray(json.load(response)["predictions"])
    np.testing.assert_allclose(served, probabilities, rtol=1e-5)
    np.savez(tmp_path / "partial.npz", left=left)
    assert (
        predict.main([uri, str(tmp_path / "partial.npz"), "--tracking-uri", sqlite_uri(tmp_path)])
        == 2
    )
    assert "no array 'right'" in capsys.readouterr().err


def test_dict_batches_are_shared_between_ranks_by_the_pairs_rule(tmp_path):
    """Rank r of 2 gets every other sample of the same shuffled epoch, on either path,
    with a tuple or dict of inputs as with one tensor."""
    for form in ("tuple pairs in memory", "dict items with a collate_fn"):
        cfg = RunConfig.enter(_config(tmp_path, form, "tracking=none"))
        task = build_task(cfg.task)
        source = as_splits(load_source(cfg.dataset), cfg.dataset, task)
        collate_fn = build_collate_fn(cfg.dataset)
        host = HostBatches(task.prepare_targets, layout_of(cfg.dataset), collate_fn)

        batches = [
            next(iter(build_loaders(cfg.dataset, source, CPU, ranks=ranks, host=host).train))
            for ranks in (Ranks(0, 1, 1, "gloo"), Ranks(0, 2, 2, "gloo"), Ranks(1, 2, 2, "gloo"))
        ]
        (whole, whole_targets), *halves = [
            (x["left"] if isinstance(x, dict) else x[0], y) for x, y in batches
        ]
        assert torch.equal(halves[0][0], whole[0::2]) and torch.equal(halves[1][0], whole[1::2])
        assert torch.equal(halves[1][1], whole_targets[1::2])


def test_a_layout_splits_pairs_and_dict_items_and_names_what_is_wrong():
    layout = Layout("y", ("a",))
    assert layout.split({"a": 1, "b": 2, "y": 3}) == ({"a": 1}, 3)
    assert Layout().split([[1, 2], 3]) == ((1, 2), 3)  # a collated tuple comes as a list
    with pytest.raises(DataError, match="no key 'a'"):
        layout.split({"b": 1, "y": 2})
    with pytest.raises(DataError, match="set dataset.target_key"):
        Layout().split({"x": 1, "y": 2})
    with pytest.raises(DataError, match="a tuple of 3"):
        Layout().split((1, 2, 3))
    seen = []
    call_model(lambda *a, **k: seen.append((a, k)), {"a": 1})
    call_model(lambda *a, **k: seen.append((a, k)), (1, 2))
    assert seen == [((), {"a": 1}), ((1, 2), {})]
