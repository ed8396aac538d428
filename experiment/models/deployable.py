"""The model a run logs: the trained net with its preprocessing and output head inside.

What is logged to MLflow takes the inputs a user has (uint8 images N x C x H x W in
0..255 as the datasets hold them, or feature rows) and answers predictions (class
probabilities, or target values): the evaluation's normalization and the task's output
head travel with the weights, so `mlflow.pyfunc`, `mlflow models serve` and
`experiment-predict` need nothing from the run's config. Its `metadata` (in the MLmodel
file) says what it takes and answers: the input shape and dtype, the classes, the task.
"""

from __future__ import annotations

import torch
from torch import nn

from experiment.data.loaders import BatchTransform, DeviceLoader, model_inputs, normalize_images

# The task's output head: logits to what a user reads (tasks.py names one per loss).
HEADS = ("softmax", "sigmoid", "exp", "identity")


class Deployable(nn.Module):
    """`model` between the run's evaluation normalization and the task's output head."""

    def __init__(self, model: nn.Module, transform: BatchTransform, head: str):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown output head {head!r}: one of {HEADS}")
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = self.model(self.preprocess(x)).float()
        if self.head == "softmax":
            return outputs.softmax(dim=1)
        if self.head == "sigmoid":
            return outputs.sigmoid()
        if self.head == "exp":  # a model that ends in log-softmax (task.loss=nll)
            return outputs.exp()
        return outputs


def raw_example(loader, size: int = 4) -> torch.Tensor:
    """A few inputs of `loader` as the data holds them (before normalization)."""
    if isinstance(loader, DeviceLoader):
        inputs = loader.images[:size]
    else:  # a HostLoader: the DataLoader's own batches
        inputs, _ = next(iter(loader.loader))
        inputs = model_inputs(inputs[:size])
    return inputs.detach().cpu().contiguous()


def metadata(example: torch.Tensor, classes: list[str] | None, task) -> dict:
    """What the logged model takes and answers, for experiment-predict and its users."""
    outputs = "probabilities" if task.name == "classification" else "values"
    return {
        "experiment.task": task.name,
        "experiment.input_shape": list(example.shape[1:]),
        "experiment.input_dtype": str(example.dtype).removeprefix("torch."),
        "experiment.classes": list(classes) if classes is not None else None,
        "experiment.outputs": outputs,
        "experiment.multi_label": bool(getattr(task, "multi_label", False)),
    }


def of_run(model: nn.Module, data, task) -> tuple[Deployable, torch.Tensor, dict]:
    """The deployable model of a run's trained `model` (on the CPU, eval mode), a raw
    input example and its metadata."""
    import copy

    net = copy.deepcopy(model).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)
    deployable = Deployable(net, data.test.transform, task.output_head).eval()
    example = raw_example(data.val)
    return deployable, example, metadata(example, data.classes, task)
