"""Config nodes to objects. Everything is `_target_`-instantiated; the code only supplies
what the config cannot know: the data's shape, the model's parameters, the optimizer."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from experiment.config import fine_tuning
from experiment.config.project import import_dotted
from experiment.config.run_config import RunConfig, as_node
from experiment.data.batches import call_model, map_inputs
from experiment.data.loaders import DataBundle, HostBatches, build_loaders, overfitting
from experiment.data.sources import as_splits, layout_of
from experiment.errors import ConfigValueError, ExperimentError
from experiment.models import pretrained
from experiment.runtime.distributed import SINGLE, Ranks
from experiment.training import data_rules
from experiment.training.engine import limited, optimizer_steps


@dataclass
class Parts:
    """What a run trains: the data, the model, its optimizer and schedule."""

    data: DataBundle
    model: nn.Module  # what is saved and logged
    forward: nn.Module  # what runs forward: the model, or its DDP and/or compiled wrapper
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    averaged: nn.Module | None = None  # the weights' moving average (trainer.ema), or None


def build_parts(run: RunConfig, device: torch.device, ranks: Ranks = SINGLE, task=None) -> Parts:
    """Data, model, optimizer and scheduler for an entered run config; with several
    ranks, the model wrapped in DistributedDataParallel. `task` (default: the config's)
    decides the targets' form and checks them and the model's outputs."""
    run = RunConfig.enter(run)
    fine_tuning.check_fine_tuning_on(run.model, ranks.distributed)
    task = task if task is not None else build_task(run.task)
    collate_fn = build_collate_fn(run.dataset)  # checked before the data loads
    where = f"dataset.source ({target_of(run.dataset.source)})"
    source = as_splits(load_source(run.dataset), run.dataset, task, where)
    data_rules.check_augmentation(run.dataset, source.input_shape)
    model = build_model(
        run.model, source.input_shape, source.num_outputs, run.regularization.dropout
    ).to(device)
    if use_sync_batchnorm(run.trainer.sync_batchnorm, ranks, device):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # channels_last suits cuDNN's conv kernels, and oneDNN's on the CPU (30-40% faster
    # epochs for the project's CNN, BENCHMARKS.md); batches then come in the same layout.
    # Not for CPU process groups: DDP's gradient buckets keep the default layout.
    on_cpu_group = device.type == "cpu" and ranks.distributed
    channels_last = is_convnet(model) and not on_cpu_group
    if channels_last and source.input_shape is not None:
        model = model.to(memory_format=torch.channels_last)
        channels_last = runs_channels_last(model, source.input_shape, device)
        if not channels_last:
            model = model.to(memory_format=torch.contiguous_format)
    else:
        channels_last = False
    data = build_loaders(
        run.dataset,
        source,
        device,
        seed=run.trainer.seed,
        channels_last=channels_last,
        ranks=ranks,
        host=HostBatches(task.prepare_targets, layout_of(run.dataset, where), collate_fn),
    )
    data_rules.check_splits(data)
    if run.trainer.overfit_batches is not None:
        data = overfitting(data, run.trainer.overfit_batches, run.trainer.seed)
    check_model_and_data(model, data, task)  # and materializes lazy layers
    data_rules.check_model(model, target_of(run.model), run.dataset.batch_size, ranks.world_size)
    batches = limited(len(data.train), run.trainer.limit_batches)
    steps = optimizer_steps(batches, run.trainer.accumulate_grad_batches)
    data_rules.check_schedule(run.scheduler, steps)
    optimizer = build_optimizer(run.optimizer, model)
    scheduler = build_scheduler(run.scheduler, optimizer, steps_per_epoch=steps)
    forward = model
    if ranks.distributed:  # gradients are averaged over the ranks inside backward()
        ids = [device.index] if device.type == "cuda" else None
        forward = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    # Batch size marked dynamic: the last, smaller batch and eval batches reuse the graph.
    forward = torch.compile(forward, dynamic=True) if run.trainer.compile else forward
    return Parts(data, model, forward, optimizer, scheduler, build_averaged(run.trainer.ema, model))


def build_averaged(ema, model: nn.Module) -> nn.Module | None:
    """An exponential moving average of `model`'s weights and buffers, or None (off)."""
    if ema.decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema.decay), use_buffers=True)


def target_of(node) -> str:
    """The `_target_` of a config node (a schema dataclass or a user's dict)."""
    return node["_target_"] if isinstance(node, dict) else node._target_


def use_sync_batchnorm(option: bool | None, ranks: Ranks, device: torch.device) -> bool:
    """Batch statistics over the global batch (`trainer.sync_batchnorm`; null: whenever
    several CUDA ranks train). PyTorch's SyncBatchNorm runs on GPUs only."""
    if option is False or ranks.world_size == 1:
        return False
    if device.type != "cuda":
        if option:
            raise ConfigValueError(
                "trainer.sync_batchnorm",
                option,
                "false or null on CPU ranks (PyTorch's SyncBatchNorm runs on GPUs only)",
            )
        return False
    return True


def _instantiate(cfg, **kwargs):
    """hydra.utils.instantiate, with our own errors (a user's mistake) unwrapped from
    Hydra's InstantiationException so they reach the user as one line."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ExperimentError):
            raise err.__cause__ from None
        raise


def load_source(dataset):
    """The dataset's images and labels (`dataset`: the run's `dataset` node)."""
    return _instantiate(dataset.source)


# What a task offers the loop (tasks.Task): a user's own task provides all of it.
TASK_PROTOCOL = (
    "loss",
    "eval_loss",
    "prepare_targets",
    "check_targets",
    "check_outputs",
    "predictions",
    "metrics",
    "metric_inputs",
    "figure_metrics",
    "plot",
)
TASK_ATTRIBUTES = ("name", "has_classes", "multi_label", "curve_metric")
# Keys of the `task` node that the run reads, not the task's constructor.
RUN_TASK_KEYS = ("metric", "direction", "metrics")


def build_task(node):
    """The run's task (tasks.py) from the `task` node; `task.metrics` (metrics the run
    adds) is kept on it as `added_metrics`."""
    node = as_node(node)
    added = node.get("metrics") or {}
    for key in RUN_TASK_KEYS:
        node.pop(key, None)
    if not isinstance(added, dict):
        raise ConfigValueError("task.metrics", added, "a mapping of names to metric nodes")
    task = _instantiate(node, _recursive_=False)
    missing = [name for name in TASK_PROTOCOL if not callable(getattr(task, name, None))]
    missing += [name for name in TASK_ATTRIBUTES if not hasattr(task, name)]
    if missing:
        raise ConfigValueError(
            "task._target_",
            node.get("_target_"),
            f"a task with {', '.join(missing)}: subclass experiment.training.tasks.Task",
        )
    if added:
        task.added_metrics = added
    return task


def build_collate_fn(dataset):
    """`dataset.collate_fn`: a dotted path to a function, or a `_target_` node that
    builds one; None for torch's default. Checked with `target_key`/`input_keys`."""
    keys, target_key = dataset.input_keys, dataset.target_key
    if keys is not None and target_key is None:
        raise ConfigValueError(
            "dataset.input_keys",
            list(keys),
            "null unless dataset.target_key is set (they select the inputs of dict items)",
        )
    if keys is not None and target_key in keys:
        raise ConfigValueError(
            "dataset.input_keys", list(keys), f"keys other than the target {target_key!r}"
        )
    spec = dataset.collate_fn
    if spec is None:
        return None
    try:
        found = import_dotted(spec) if isinstance(spec, str) else _instantiate(as_node(spec))
    except ExperimentError:
        raise
    except Exception as err:
        raise ConfigValueError(
            "dataset.collate_fn", spec, f"an importable function or _target_ node ({err})"
        ) from None
    if not callable(found):
        raise ConfigValueError("dataset.collate_fn", spec, "a callable (a function of a list)")
    return found


def build_model(node, input_shape, num_classes: int, dropout: float | None = None) -> nn.Module:
    """Any `nn.Module` class or factory of `model._target_`, given by name only those of
    `num_classes` (the number of outputs: classes, or target columns), `in_channels` /
    `in_chans`, `in_features` (the width of the inputs, flattened), `input_shape` and
    `dropout` (`regularization.dropout`) that its signature takes and the node does not
    set (a factory that takes **kwargs gets `num_classes`)."""
    known = {
        "num_classes": num_classes,
        "in_channels": input_shape[0] if input_shape else None,
        "in_chans": input_shape[0] if input_shape else None,
        "in_features": math.prod(input_shape) if input_shape else None,
        "input_shape": tuple(input_shape) if input_shape is not None else None,
        "dropout": dropout,
    }
    target, keys = target_of(node), set(as_node(node))
    accepted, open_kwargs = _parameters(target)
    given = {
        name: value
        for name, value in known.items()
        if name in accepted and name not in keys and value is not None
    }
    if open_kwargs and "num_classes" not in accepted and "num_classes" not in keys:
        given["num_classes"] = num_classes
    model = _instantiate(node, **given)
    if not isinstance(model, nn.Module):
        raise ConfigValueError(
            "model._target_",
            target,
            f"an nn.Module class or factory (it returned a {type(model).__name__})",
        )
    return model


def _parameters(target: str) -> tuple[set[str], bool]:
    """The named parameters of `target` and whether it takes **kwargs."""
    try:
        factory = import_dotted(target)
    except Exception as err:
        raise ConfigValueError(
            "model._target_",
            target,
            f"an importable class or function ({type(err).__name__}: "
            f"{err}); a module of your own must be importable from where the command runs",
        ) from None
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: give it nothing
        return set(), False
    kinds = {p.kind for p in signature.parameters.values()}
    return set(signature.parameters), inspect.Parameter.VAR_KEYWORD in kinds


def check_model_and_data(model: nn.Module, data: DataBundle, task) -> None:
    """One batch through the model before anything trains: lazy layers take their shapes
    (before the optimizer sees the parameters and DDP wraps them), and outputs or targets
    that do not fit the task stop the run with one line."""
    inputs, targets = next(iter(data.train))
    task.check_targets(targets, data.num_outputs)
    was_training = model.training
    model.eval()  # batch norm statistics stay untouched by this batch
    with torch.no_grad():
        outputs = call_model(model, map_inputs(lambda x: x[:2], inputs))
    model.train(was_training)
    task.check_outputs(outputs, data.num_outputs)


def build_optimizer(node, model: nn.Module) -> torch.optim.Optimizer:
    """The configured optimizer over the model's parameters; fused where it takes `fused`.

    A fused step updates every parameter in one kernel instead of several per tensor: on
    CUDA, and on the CPU too (Adam's step for the project's CNN: ~0.13 ms against
    ~0.6 ms), unless the node sets `fused` itself. Not for a model with frozen
    parameters: thawed later, they reach a fused step without the state the others have
    (PyTorch's fused SGD then fails). An optimizer that refuses it here (a device or dtype
    it has no fused kernel for) is built unfused.
    """
    node = as_node(node)
    backbone_lr_scale = node.pop("backbone_lr_scale", None)  # ours, not the optimizer's
    factory = instantiate(node)
    groups = list(parameter_groups(model, node["lr"], backbone_lr_scale))
    all_trained = all(p.requires_grad for p in model.parameters())
    if (
        all_trained
        and "fused" not in node
        and "fused" in inspect.signature(factory.func).parameters
    ):
        try:
            return factory(groups, fused=True)
        except (RuntimeError, ValueError, TypeError):
            pass
    return factory(groups)


def parameter_groups(model: nn.Module, lr: float, backbone_lr_scale: float | None):
    """All parameters at `lr`; with a backbone scale, the backbone at lr x scale in a group
    of its own and the classifier head at lr (the swept rate stays the head's)."""
    if backbone_lr_scale is None:
        return model.parameters()
    head = list(pretrained.head(model).parameters())
    return [
        {"params": pretrained.backbone_parameters(model), "lr": lr * backbone_lr_scale},
        {"params": head},
    ]


def build_scheduler(scheduler, optimizer, steps_per_epoch: int):
    """The `scheduler.schedule` node over the optimizer; None for a constant rate."""
    if scheduler.schedule is None:
        return None
    schedule = as_node(scheduler.schedule)
    runtime = {}
    if "steps_per_epoch" in schedule and schedule["steps_per_epoch"] is None:
        runtime["steps_per_epoch"] = steps_per_epoch  # known only once the data is loaded
    return instantiate(schedule)(optimizer, **runtime)


def runs_channels_last(model: nn.Module, input_shape, device) -> bool:
    """Whether the model takes channels_last batches: one that calls `.view()` on its
    feature maps, say, does not, and then keeps the default layout."""
    probe = torch.zeros(2, *input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(probe.contiguous(memory_format=torch.channels_last))
        return True
    except RuntimeError:
        return False
    finally:
        model.train(was_training)


def is_convnet(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())
