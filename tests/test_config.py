"""Every option of every config group composes, validates and instantiates."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from experiment.config.run_config import RunConfig, as_node
from experiment.training.builders import build_model, build_optimizer, build_scheduler
from tests.conftest import CONF, ROOT, compose_config, run_config

GROUPS = [
    "dataset",
    "model",
    "optimizer",
    "scheduler",
    "regularization",
    "tracking",
    "task",
    "experiment",
    "debug",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_groups_have_the_documented_options():
    assert options("dataset") == sorted(
        [
            "digits",
            "mnist",
            "fashion_mnist",
            "cifar10",
            "image_folder",
            "synthetic",
            "synthetic_regression",
        ]
    )
    assert options("model") == ["cnn", "mlp", "resnet18", "timm"]
    assert options("optimizer") == ["adam", "adamw", "rmsprop", "sgd"]
    assert options("scheduler") == ["cosine", "none", "onecycle", "plateau", "step"]
    assert options("regularization") == ["default", "none", "strong"]
    assert options("tracking") == ["mlflow", "none"]
    assert options("task") == ["classification", "regression"]
    assert options("experiment") == ["digits_mlp", "fashion_mnist_adam", "mnist_tutorial"]
    assert options("debug") == ["anomaly", "fast", "overfit", "profile"]


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in GROUPS for o in options(g) if (g, o) != ("dataset", "image_folder")],
)
def test_option_composes_and_validates(group, option):
    cfg = compose_config([f"{group}={option}"])
    RunConfig.enter(cfg)
    # Every interpolation resolves.
    OmegaConf.to_container(cfg, resolve=True)


def test_image_folder_needs_a_path():
    cfg = compose_config(["dataset=image_folder", "dataset.source.path=/some/images"])
    RunConfig.enter(cfg)
    assert cfg.dataset.source.path == "/some/images"


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_models_take_their_shape_from_the_data(model, shape):
    cfg = run_config([f"model={model}"])
    net = build_model(cfg.model, shape, num_classes=7)
    net.eval()
    assert net(torch.zeros(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("init", ["default", "kaiming", "xavier", "normal"])
def test_weight_init_schemes(init):
    cfg = run_config(["model=cnn", f"model.init={init}", "model.init_std=0.5"])
    net = build_model(cfg.model, (1, 8, 8), num_classes=3)
    weight = net.features[0].weight
    assert torch.isfinite(weight).all()
    if init == "normal":
        assert 0.3 < weight.std().item() < 0.7


def test_dropout_and_weight_decay_come_from_regularization():
    cfg = run_config(["regularization.dropout=0.3", "regularization.weight_decay=0.01"])
    assert cfg.model.dropout == 0.3
    assert cfg.optimizer.weight_decay == 0.01
    net = build_model(cfg.model, (1, 8, 8), 10)
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.3 for m in net.modules())
    assert build_optimizer(cfg.optimizer, net).param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_instantiate_and_step(optimizer, scheduler):
    cfg = run_config([f"optimizer={optimizer}", f"scheduler={scheduler}", "optimizer.lr=0.01"])
    net = build_model(cfg.model, (1, 8, 8), 10)
    opt = build_optimizer(cfg.optimizer, net)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)
    sched = build_scheduler(cfg.scheduler, opt, steps_per_epoch=5)
    assert (sched is None) == (scheduler == "none")  # none: a constant rate, no schedule
    net(torch.zeros(2, 1, 8, 8)).sum().backward()
    opt.step()
    if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        sched.step(1.0)
    elif sched is not None:
        sched.step()
    assert opt.param_groups[0]["lr"] > 0


def test_swept_keys_and_objective_exist():
    cfg = compose_config([])
    for key in [
        "optimizer.lr",
        "dataset.batch_size",
        "regularization.dropout",
        "regularization.weight_decay",
    ]:
        assert OmegaConf.select(cfg, key) is not None, key
    assert cfg.optimized_metric == "val/acc"


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_is_fused_on_the_cpu_where_it_takes_fused(optimizer):
    cfg = run_config([f"optimizer={optimizer}"])
    net = build_model(cfg.model, (1, 8, 8), 10)
    fused = build_optimizer(cfg.optimizer, net)
    assert fused.defaults["fused"] is True
    # The fused step updates the weights as the per-tensor one does.
    plain = build_optimizer({**as_node(cfg.optimizer), "fused": False}, copy.deepcopy(net))
    assert plain.defaults["fused"] is False  # a node's own `fused` is kept
    for optimizer_ in (fused, plain):
        for group in optimizer_.param_groups:
            for p in group["params"]:
                p.grad = torch.ones_like(p)
        optimizer_.step()
    for a, b in zip(fused.param_groups[0]["params"], plain.param_groups[0]["params"], strict=True):
        torch.testing.assert_close(a, b)


def test_a_model_with_frozen_parameters_gets_an_unfused_optimizer():
    # Parameters thawed later reach a fused step without the others' state.
    cfg = run_config(["optimizer=sgd"])
    net = build_model(cfg.model, (1, 8, 8), 10)
    next(net.parameters()).requires_grad_(False)
    assert not build_optimizer(cfg.optimizer, net).defaults.get("fused")


def test_an_optimizer_without_a_fused_kernel_is_built_unfused():
    cfg = run_config(["optimizer=rmsprop"])
    net = build_model(cfg.model, (1, 8, 8), 10)
    assert not build_optimizer(cfg.optimizer, net).defaults.get("fused")


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_is_fused_on_cuda(optimizer):
    cfg = run_config([f"optimizer={optimizer}"])
    net = build_model(cfg.model, (1, 8, 8), 10).cuda()
    assert build_optimizer(cfg.optimizer, net).defaults["fused"] is True


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=mlp", "optimizer=sgd"],
        ["run_name='1e5'"],
        ["run_name='true'"],
        ["run_name='café'"],
    ],
)
def test_yaml_text_is_omegaconfs(overrides):
    """The run's config.yaml on libyaml's emitter: the text
    OmegaConf writes, strings that read as numbers or booleans quoted."""
    from experiment.api import compose
    from experiment.config.run_config import RunConfig, to_yaml

    run = RunConfig.enter(compose(overrides))
    assert run.yaml() == OmegaConf.to_yaml(run.resolved)
    tricky = {"a": "1", "b": "true", "c": "null", "d": [1.5, "2.5", None], "e": "x: y"}
    assert to_yaml(tricky) == OmegaConf.to_yaml(tricky)


def test_a_key_added_to_a_users_own_node_goes_to_its_target(tmp_path):
    """Under a node of one's own (no schema: a `_target_` and its arguments), an added key
    is an argument of the constructor, kept and logged as a param."""
    import experiment

    own = ROOT / "examples" / "own_project" / "conf"
    overrides = ["model=tiny", "+model.depth=2", f"trainer.checkpoint_dir={tmp_path}"]
    run = RunConfig.enter(experiment.compose(overrides, config_dir=str(own)))
    assert run.resolved["model"]["depth"] == 2 and run.params()["model.depth"] == "2"


def test_a_model_taking_in_features_gets_the_inputs_flattened_width():
    """`in_features` is passed by name like `num_classes`: the data knows it."""
    flat = build_model({"_target_": "torch.nn.Linear", "out_features": 3}, (10,), 3)
    assert (flat.in_features, flat.out_features) == (10, 3)
    images = build_model({"_target_": "torch.nn.Linear", "out_features": 3}, (1, 8, 8), 3)
    assert images.in_features == 64
    given = build_model(
        {"_target_": "torch.nn.Linear", "in_features": 5, "out_features": 3}, (10,), 3
    )
    assert given.in_features == 5  # what the node sets wins


def test_a_config_file_that_is_not_yaml_is_one_line_naming_file_and_line(tmp_path):
    import experiment
    from experiment.errors import ConfigError

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "broken.yaml").write_text("_target_: mynets.Net\nwidth: [32\n")
    with pytest.raises(ConfigError) as refused:
        experiment.compose(["model=broken"], config_dir=str(tmp_path))
    message = str(refused.value)
    assert message.startswith(f"YAML error in {tmp_path / 'model' / 'broken.yaml'}, line 3")
    assert "expected ',' or ']'" in message and "\n" not in message
