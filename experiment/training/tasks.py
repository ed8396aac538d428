"""What a run learns: a task owns the loss, the metrics and the per-task plot.

The loop, evaluation, the reduction across ranks and tracking call the task and never
branch on it. Metrics follow the loop's rule: each batch adds to running sums on the
device (`batch_sums`); once per epoch the sums are added across ranks and read to the
host in one go, and `metrics` turns them into numbers. Sums are exact, so a metric is the
same whether an epoch ran on one process or was split between several.

`classification` (`task=classification`, the default): cross-entropy with label smoothing
(or `nll` for models that end in log-softmax), metrics `acc`, `top5_acc` (more than 5
classes), macro `f1`, and the test confusion matrix; with `bce_with_logits` and 0/1
targets of one column per label, multi-label: `acc` per label and macro `f1` over labels.
`regression` (`task=regression`): float targets of any width, `mse` / `l1` / `smooth_l1`,
metrics `mse`, `mae` and `r2` (averaged over target columns, as scikit-learn's
`r2_score`), and a predicted-against-true plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from experiment.errors import ConfigValueError, DataError

Sums = dict[str, torch.Tensor]

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


def add_sums(total: Sums | None, batch: Sums) -> Sums:
    """Running sums: the first batch's sums, then each next batch added in place."""
    if total is None:
        return {k: v.clone() for k, v in batch.items()}
    for key, value in batch.items():
        total[key] += value
    return total


class Classification:
    """Single-label (integer class targets) or, with `bce_with_logits`, multi-label."""

    name = "classification"
    curve_metric = "acc"  # what the learning-curves plot shows besides the loss

    def __init__(
        self,
        loss="cross_entropy",
        label_smoothing: float = 0.0,
        metric: str = "val/acc",
        direction: str = "maximize",
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
        self.objective = (metric, direction)

    def prepare_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Class indices as int64, multi-label columns as float32; targets that suit
        neither are left for `check_targets` to name."""
        if self.multi_label:
            return targets.float()
        if not targets.dtype.is_floating_point and targets.dtype != torch.bool:
            return targets.long()
        return targets

    def metric_names(self, num_outputs: int) -> list[str]:
        if self.multi_label:
            return ["loss", "acc", "f1"]
        return ["loss", "acc", *(["top5_acc"] if num_outputs > 5 else []), "f1"]

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

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> Sums:
        n, classes = outputs.shape[0], outputs.shape[1]
        sums = {"loss": loss.float() * n, "count": torch.tensor(float(n), device=outputs.device)}
        if self.multi_label:
            predicted, truth = outputs > 0, targets > 0.5
            sums["correct"] = (predicted == truth).sum().float() / classes
            sums["tp"] = (predicted & truth).sum(0).float()
            sums["fp"] = (predicted & ~truth).sum(0).float()
            sums["fn"] = (~predicted & truth).sum(0).float()
            return sums
        predicted = outputs.argmax(1)
        sums["correct"] = (predicted == targets).sum().float()
        if classes > 5:
            top5 = outputs.topk(5, dim=1).indices
            sums["top5"] = (top5 == targets[:, None]).any(1).sum().float()
        pairs = torch.bincount(targets * classes + predicted, minlength=classes * classes)
        sums["confusion"] = pairs.float().view(classes, classes)  # rows: true class
        return sums

    def metrics(self, sums: Sums) -> dict[str, float]:
        count = float(sums["count"])
        result = {"loss": float(sums["loss"]) / count, "acc": float(sums["correct"]) / count}
        if "top5" in sums:
            result["top5_acc"] = float(sums["top5"]) / count
        if self.multi_label:
            tp, fp, fn = sums["tp"], sums["fp"], sums["fn"]
        else:
            confusion = sums["confusion"]
            tp = confusion.diagonal()
            fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
        result["f1"] = _macro_f1(tp, fp, fn)
        return result

    def plot(self, test_sums: Sums, classes: list[str] | None, path: Path) -> Path | None:
        """The test confusion matrix (single-label); None for multi-label."""
        if self.multi_label:
            return None
        from experiment.tracking import plots

        matrix = test_sums["confusion"].long().numpy()
        names = classes or [str(i) for i in range(len(matrix))]
        return plots.confusion_matrix(matrix, names, path / "confusion_matrix.png")


def _macro_f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> float:
    """The mean over classes of 2TP / (2TP + FP + FN); a class never seen nor predicted
    counts as 0, as scikit-learn's f1_score(average='macro', zero_division=0)."""
    denominator = 2 * tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1e-12), 0.0)
    return float(f1.mean())


class Regression:
    """Float targets N x D (a 1-D target is one column); the model outputs N x D."""

    name = "regression"
    has_classes = False  # one output per target column
    output_head = "identity"  # the logged model answers the predicted values
    curve_metric = "r2"
    plot_points = 5000  # the test predictions kept for the plot

    def __init__(self, loss="mse", metric: str = "val/mse", direction: str = "minimize"):
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss = self.eval_loss = _loss_function(loss, REGRESSION_LOSSES, 0.0)
        self.objective = (metric, direction)

    def metric_names(self, num_outputs: int) -> list[str]:
        return ["loss", "mse", "mae", "r2"]

    def prepare_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Columns N x D (a 1-D target is one column), float32 where they are floats."""
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

    def batch_sums(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> Sums:
        outputs, targets = outputs.float(), targets.float()
        error = outputs - targets
        n = outputs.shape[0]
        return {
            "loss": loss.float() * n,
            "count": torch.tensor(float(n), device=outputs.device),
            "se": (error * error).sum(0),
            "ae": error.abs().sum(0),
            "y": targets.sum(0),
            "yy": (targets * targets).sum(0),
        }

    def metrics(self, sums: Sums) -> dict[str, float]:
        count = float(sums["count"])
        width = sums["se"].numel()
        total = (sums["yy"] - sums["y"] ** 2 / count).clamp(min=0)  # per column
        r2 = torch.where(total > 0, 1 - sums["se"] / total.clamp(min=1e-300), math.nan)
        return {
            "loss": float(sums["loss"]) / count,
            "mse": float(sums["se"].sum()) / (count * width),
            "mae": float(sums["ae"].sum()) / (count * width),
            "r2": float(r2.mean()),
        }

    def plot(self, test_sums: Sums, classes, path: Path) -> Path | None:
        """Predicted against true values of the test split (the first column)."""
        points = test_sums.get("points")
        if points is None:
            return None
        from experiment.tracking import plots

        return plots.predicted_vs_true(points, path / "predicted_vs_true.png")
