"""What a run learns: a task owns the loss, the metrics, what a prediction is and the
per-task plot. `Task` is the protocol; the loop, evaluation, tracking and the logged
model call it and never branch on which task it is.

A user's own task (`task._target_: mypackage.MyTask`) subclasses `Task` (or provides its
methods) and overrides what differs: at least `loss`, usually `metrics`. It is the way
to problems the two tasks here do not cover, a model with two heads whose loss weighs
both, say (examples/two_heads).

`classification` (`task=classification`, the default): cross-entropy with label smoothing
(or `nll` for models that end in log-softmax), metrics `acc`, `top5_acc` (more than 5
classes), macro `f1`, and the test confusion matrix; with `bce_with_logits` and 0/1
targets of one column per label, multi-label: `acc` over labels and macro `f1`.
`regression` (`task=regression`): float targets of any width, `mse` / `l1` / `smooth_l1`,
metrics `mse`, `mae` and `r2` (averaged over target columns, as scikit-learn's
`r2_score`), and a predicted-against-true plot. Metrics are torchmetrics objects
(metrics.py), as are those `task.metrics` adds.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from experiment.data.batches import map_inputs
from experiment.errors import ConfigValueError, DataError

if TYPE_CHECKING:
    from torchmetrics import Metric

CLASSIFICATION_LOSSES = ("cross_entropy", "nll", "bce_with_logits")
REGRESSION_LOSSES = ("mse", "l1", "smooth_l1")


def _bce_with_logits(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))


def _loss_function(spec, allowed: tuple[str, ...], label_smoothing: float) -> Callable:
    """A loss by name, or any `_target_` node (a loss module or a function of
    (outputs, targets) returning the batch's mean loss)."""
    if isinstance(spec, str):
        if spec not in allowed:
            raise ConfigValueError(
                "task.loss", spec, f"one of {', '.join(allowed)}, or a node with _target_"
            )
        # Module-level functions, not lambdas: a task pickles (a sweep's worker sends its
        # runs' figures, drawn by the task, to the sweep's process).
        if spec == "cross_entropy":
            return partial(F.cross_entropy, label_smoothing=label_smoothing)
        if spec == "bce_with_logits":
            return _bce_with_logits
        return {
            "nll": F.nll_loss,
            "mse": F.mse_loss,
            "l1": F.l1_loss,
            "smooth_l1": F.smooth_l1_loss,
        }[spec]
    loss = instantiate(spec)
    if not callable(loss):
        raise ConfigValueError("task.loss", spec, "a loss name or a callable _target_")
    return loss


class Task:
    """The protocol of a task, with defaults: subclass it and override what differs.

    The loop calls, per batch: `loss(outputs, targets)` while training and
    `eval_loss(outputs, targets)` while evaluating (outputs: what the model returned, a
    tensor or a tuple or dict of them; targets: the batch's, after `prepare_targets`);
    then `predictions(outputs)` and, for each metric, `metric_inputs(metric,
    predictions, targets)`, which gives the metric's `update` its arguments. Before any
    training `check_targets` and `check_outputs` see the first batch.
    """

    name = "custom"  # the logged model's metadata and messages say it
    has_classes = False  # outputs are scores for the data's classes
    multi_label = False
    curve_metric = "loss"  # what the learning-curves plot shows beside the loss
    added_metrics: dict = {}  # the run's task.metrics nodes (metrics.py)

    def loss(self, outputs, targets) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define loss(outputs, targets)")

    def eval_loss(self, outputs, targets) -> torch.Tensor:
        """The loss on validation and test (without training-only terms)."""
        return self.loss(outputs, targets)

    def prepare_targets(self, targets):
        """A batch's targets in the form `loss` and the metrics take."""
        return targets

    def check_targets(self, targets, num_outputs: int) -> None:
        """Raise a DataError naming the problem for targets this task cannot use."""

    def check_outputs(self, outputs, num_outputs: int) -> None:
        """Raise an error naming the problem for model outputs this task cannot use."""

    def predictions(self, outputs):
        """What the model's outputs mean to a user (probabilities, values): what the
        metrics see and what the logged model answers. A tensor, or a dict of them."""
        return outputs

    def metrics(self, num_outputs: int) -> dict[str, Metric]:
        """The task's own metrics, by name (new objects at each call)."""
        return {}

    def metric_inputs(self, metric: Metric, predictions, targets) -> tuple:
        """The arguments of `metric.update` for a batch."""
        return predictions, targets

    def figure_metrics(self, num_outputs: int) -> dict[str, Metric]:
        """Metrics that feed the test split's figure (`plot`), not logged as numbers."""
        return {}

    def plot(self, figures: dict[str, torch.Tensor], classes, path: Path) -> Path | None:
        """Draw the test figure from `figures` (the computed figure metrics) into `path`;
        the file, or None for none."""
        return None


def float_outputs(outputs):
    """Model outputs (a tensor, or a tuple or dict of them) as float32, detached."""
    return map_inputs(lambda v: v.detach().float(), outputs)


def one_target_tensor(targets, task: str) -> torch.Tensor:
    """The project's tasks take one target tensor per batch."""
    if not isinstance(targets, torch.Tensor):
        raise DataError(
            f"task={task} takes one target per sample; the batches' targets are a "
            f"{type(targets).__name__}. For several targets, give task._target_ a task of "
            "your own (experiment.training.tasks.Task)."
        )
    return targets


def check_output_tensor(outputs, num_outputs: int, has_classes: bool) -> None:
    """The project's tasks take one tensor of N x num_outputs."""
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs)
        raise ConfigValueError(
            "model",
            shape,
            f"a model whose output is a tensor of N x {num_outputs} (or a task of your own "
            "for other outputs: task._target_)",
        )
    if outputs.shape[1] != num_outputs:
        what = "classes" if has_classes else "target columns"
        raise DataError(
            f"The model outputs {outputs.shape[1]} values per sample, but the data has "
            f"{num_outputs} {what}: give the model num_classes={num_outputs} "
            "(the run passes it to a model that takes `num_classes`)."
        )


class Classification(Task):
    """Single-label (integer class targets) or, with `bce_with_logits`, multi-label."""

    name = "classification"
    curve_metric = "acc"  # what the learning-curves plot shows besides the loss

    def __init__(
        self,
        loss="cross_entropy",
        label_smoothing: float = 0.0,
    ):
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss = _loss_function(loss, CLASSIFICATION_LOSSES, label_smoothing)
        # Validation and test losses without label smoothing: the data's own fit.
        self.eval_loss = _loss_function(loss, CLASSIFICATION_LOSSES, 0.0)
        self.multi_label = loss == "bce_with_logits"
        self.has_classes = not self.multi_label  # else one output per label column
        # What turns the model's outputs into probabilities in the logged model
        # (deployable.py): a custom loss is taken to read logits, as cross-entropy does.
        self.output_head = {"bce_with_logits": "sigmoid", "nll": "exp"}.get(
            self.loss_name or "", "softmax"
        )

    def prepare_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Class indices as int64, multi-label columns as float32; targets that suit
        neither are left for `check_targets` to name."""
        targets = one_target_tensor(targets, self.name)
        if self.multi_label:
            return targets.float()
        if not targets.dtype.is_floating_point and targets.dtype != torch.bool:
            return targets.long()
        return targets

    def metrics(self, num_outputs: int) -> dict[str, Metric]:
        from torchmetrics import classification  # ~1.3 s: imported by runs that train

        n = num_outputs
        if self.multi_label:
            return {
                "acc": classification.MultilabelAccuracy(n, average="micro", validate_args=False),
                "f1": classification.MultilabelF1Score(n, average="macro", validate_args=False),
            }
        found = {"acc": classification.MulticlassAccuracy(n, average="micro", validate_args=False)}
        if n > 5:
            found["top5_acc"] = classification.MulticlassAccuracy(
                n, top_k=5, average="micro", validate_args=False
            )
        found["f1"] = classification.MulticlassF1Score(n, average="macro", validate_args=False)
        return found

    def figure_metrics(self, num_outputs: int) -> dict[str, Metric]:
        if self.multi_label:
            return {}
        from torchmetrics import classification

        return {
            "confusion": classification.MulticlassConfusionMatrix(num_outputs, validate_args=False)
        }

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities (per label, for multi-label), as the logged model answers."""
        outputs = outputs.float()
        if self.output_head == "sigmoid":
            return outputs.sigmoid()
        if self.output_head == "exp":
            return outputs.exp()
        return outputs.softmax(dim=1)

    def metric_inputs(self, metric: Metric, predictions, targets) -> tuple:
        """Probabilities, as torchmetrics documents them per task: N x C (multiclass),
        N x L with int targets (multilabel), the positive class's N (binary metrics)."""
        if self.multi_label:
            return predictions, targets.long()
        if type(metric).__name__.startswith("Binary"):
            if predictions.shape[1] != 2:
                raise ConfigValueError(
                    "task.metrics",
                    type(metric).__name__,
                    f"a multiclass metric for these {predictions.shape[1]} classes (a binary "
                    "one needs 2)",
                )
            return predictions[:, 1], targets
        return predictions, targets

    def check_outputs(self, outputs, num_outputs: int) -> None:
        check_output_tensor(outputs, num_outputs, has_classes=True)

    def check_targets(self, targets: torch.Tensor, num_outputs: int) -> None:
        """A clear error for targets this loss cannot use (before any training)."""
        if self.multi_label:
            if targets.ndim != 2 or targets.shape[1] != num_outputs:
                raise DataError(
                    f"task.loss=bce_with_logits takes 0/1 targets with one column per label "
                    f"(N x {num_outputs}); the targets have shape {tuple(targets.shape)}."
                )
            return
        if targets.ndim != 1 or targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise DataError(
                f"task=classification with task.loss={self.loss_name or 'a custom loss'} takes "
                f"integer class indices (a 1-D int64 tensor); the targets are "
                f"{targets.dtype} of shape {tuple(targets.shape)}. Cast them to int64 (class "
                "labels), use task.loss=bce_with_logits for 0/1 multi-label targets, or "
                "task=regression for real-valued ones."
            )

    def plot(self, figures: dict, classes: list[str] | None, path: Path) -> Path | None:
        """The test confusion matrix (single-label); None for multi-label."""
        if "confusion" not in figures:
            return None
        from experiment.tracking import plots

        matrix = figures["confusion"].long().numpy()
        names = classes or [str(i) for i in range(len(matrix))]
        return plots.confusion_matrix(matrix, names, path / "confusion_matrix.png")


class Regression(Task):
    """Float targets N x D (a 1-D target is one column); the model outputs N x D."""

    name = "regression"
    has_classes = False  # one output per target column
    output_head = "identity"  # the logged model answers the predicted values
    curve_metric = "r2"
    plot_points = 5000  # the test predictions kept for the plot

    def __init__(self, loss="mse"):
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss = self.eval_loss = _loss_function(loss, REGRESSION_LOSSES, 0.0)

    def metrics(self, num_outputs: int) -> dict[str, Metric]:
        from torchmetrics import regression

        return {
            "mse": regression.MeanSquaredError(),
            "mae": regression.MeanAbsoluteError(),
            "r2": regression.R2Score(multioutput="uniform_average"),
        }

    def figure_metrics(self, num_outputs: int) -> dict[str, Metric]:
        from experiment.training.metrics import KeptPoints

        return {"points": KeptPoints(self.plot_points)}

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float()

    def metric_inputs(self, metric: Metric, predictions, targets) -> tuple:
        """N x D; one column as N, the form torchmetrics' single-output metrics take
        (contiguous: torchmetrics flattens with .view)."""
        if predictions.shape[1] == 1:
            predictions, targets = predictions[:, 0], targets[:, 0]
        return predictions.contiguous(), targets.float().contiguous()

    def check_outputs(self, outputs, num_outputs: int) -> None:
        check_output_tensor(outputs, num_outputs, has_classes=False)

    def prepare_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Columns N x D (a 1-D target is one column), float32 where they are floats."""
        targets = one_target_tensor(targets, self.name)
        if targets.dtype.is_floating_point:
            targets = targets.float()
        return targets.unsqueeze(1) if targets.ndim == 1 else targets

    def check_targets(self, targets: torch.Tensor, num_outputs: int) -> None:
        if not targets.dtype.is_floating_point or targets.ndim != 2:
            raise DataError(
                f"task=regression takes real-valued targets (floats, N or N x D); the "
                f"targets are {targets.dtype} of shape {tuple(targets.shape)}. Use "
                "task=classification for class labels."
            )

    def plot(self, figures: dict, classes, path: Path) -> Path | None:
        """Predicted against true values of the test split (the first column)."""
        points = figures.get("points")
        if points is None or len(points) == 0:
            return None
        from experiment.tracking import plots

        return plots.predicted_vs_true(points.numpy(), path / "predicted_vs_true.png")
