"""The model a run logs: the trained net with its preprocessing and output head inside.

What is logged to MLflow takes the inputs a user has (uint8 images N x C x H x W in
0..255 as the datasets hold them, feature rows, or the tuple or dict of tensors a model
of several inputs takes: data/batches.py) and answers predictions (class probabilities,
target values, or what a task of one's own calls its predictions): the evaluation's
normalization and the task's output head travel with the weights, so `mlflow.pyfunc`,
`mlflow models serve` and `experiment-predict` need nothing from the run's config. Its
`metadata` (in the MLmodel file) says what it takes and answers: the input shape and
dtype (or each named input's), the classes, the task.
"""

from __future__ import annotations

import torch
from torch import nn

from experiment.data.batches import call_model, input_names, map_inputs, structured
from experiment.data.loaders import (
    BatchTransform,
    DeviceLoader,
    model_inputs,
    normalize_images,
)

# The project's tasks' output heads: logits to what a user reads (tasks.py names one per
# loss). A task of one's own brings its `predictions` instead.
HEADS = ("softmax", "sigmoid", "exp", "identity")


class Deployable(nn.Module):
    """`model` between the run's evaluation normalization and the task's output head
    (one of HEADS, or a function of the outputs: a task's `predictions`)."""

    def __init__(self, model: nn.Module, transform: BatchTransform, head):
        super().__init__()
        if not callable(head) and head not in HEADS:
            raise ValueError(f"unknown output head {head!r}: one of {HEADS}, or a function")
        self.model, self.head = model, head
        # The eval transform's affine map, as buffers: they travel with the weights.
        self.register_buffer("uint8_scale", transform.scale.detach().cpu().clone())
        self.register_buffer("shift", transform.shift.detach().cpu().clone())
        self.register_buffer("float_scale", transform.float_scale.detach().cpu().clone())
        self.normalizes_floats = transform.normalizes_floats

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """What the run's evaluation did to a batch (data.BatchTransform.normalized)."""
        if x.ndim != 4:  # features, sequences: as the model took them
            return model_inputs(x)
        return normalize_images(
            x, self.uint8_scale, self.float_scale, self.shift, self.normalizes_floats
        )

    def forward(self, x):
        """`x`: one tensor (what torch.export traces for the pt2 format), or a tuple or
        dict of them, given to the model as its several inputs."""
        outputs = call_model(self.model, map_inputs(self.preprocess, x))
        if callable(self.head):
            return self.head(outputs)
        outputs = outputs.float()
        if self.head == "softmax":
            return outputs.softmax(dim=1)
        if self.head == "sigmoid":
            return outputs.sigmoid()
        if self.head == "exp":  # a model that ends in log-softmax (task.loss=nll)
            return outputs.exp()
        return outputs


def raw_example(loader, size: int = 4):
    """A few inputs of `loader` as the data holds them (before normalization), in their
    form (a tensor, a tuple or a dict)."""
    # A HostLoader's are the DataLoader's own batches.
    inputs = loader.inputs if isinstance(loader, DeviceLoader) else loader.raw_inputs()
    return map_inputs(lambda x: x[:size].detach().cpu().contiguous(), inputs)


def metadata(example, classes: list[str] | None, task) -> dict:
    """What the logged model takes and answers, for experiment-predict and its users."""
    kinds = {"classification": "probabilities", "regression": "values"}
    described = {
        "experiment.task": task.name,
        "experiment.classes": list(classes) if classes is not None else None,
        "experiment.outputs": kinds.get(task.name, "predictions"),
        "experiment.multi_label": bool(getattr(task, "multi_label", False)),
    }
    if not structured(example):
        return {
            **described,
            "experiment.input_shape": list(example.shape[1:]),
            "experiment.input_dtype": str(example.dtype).removeprefix("torch."),
        }
    tensors = example.values() if isinstance(example, dict) else example
    return {
        **described,
        "experiment.input_shape": None,  # several inputs: see experiment.inputs
        "experiment.input_form": "dict" if isinstance(example, dict) else "tuple",
        "experiment.inputs": [
            {"name": name, "shape": list(x.shape[1:]), "dtype": str(x.dtype).split(".")[-1]}
            for name, x in zip(input_names(example), tensors, strict=True)
        ],
    }


def head_of(task):
    """The logged model's output head: the project's tasks name one, a task of one's
    own answers its `predictions`."""
    head = getattr(task, "output_head", None)
    return head if head in HEADS else task.predictions


def of_run(model: nn.Module, data, task) -> tuple[Deployable, object, dict]:
    """The deployable model of a run's trained `model` (on the CPU, eval mode), a raw
    input example and its metadata."""
    import copy

    net = copy.deepcopy(model).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    deployable = Deployable(net, data.test.transform, head_of(task)).eval()
    example = raw_example(data.val)
    return deployable, example, metadata(example, data.classes, task)
