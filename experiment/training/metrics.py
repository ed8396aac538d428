"""Epoch metrics on torchmetrics: the task's own, the ones a user adds under
`task.metrics`, and the loss.

Each batch updates the metrics' states on the device (no host sync per batch); once per
pass over a loader `EpochMetrics.compute` reduces them across the ranks of a distributed
run (torchmetrics does, where a process group is up) and reads the values to the host.

`task.metrics` maps a name to a `_target_` node: a `torchmetrics.Metric` class (its
values are logged as `train/<name>`, `val/<name>`, `test/<name>`; `val/<name>` may be the
`optimized_metric`), or a plain function `f(predictions, targets) -> number`, which sees
the epoch's predictions and targets whole. Arguments the data decides (`num_classes`,
`num_labels`, `num_outputs`, a wrapper class's `task`) are filled where the metric takes
them and the node leaves them out.
"""

from __future__ import annotations

import functools
import inspect

import torch
from hydra.utils import instantiate
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from experiment.config.project import import_dotted
from experiment.data.batches import sample_count
from experiment.errors import ConfigValueError, DataError
from experiment.runtime.distributed import reduced


class FunctionMetric(Metric):
    """A plain function of (predictions, targets) over a whole epoch: the batches' are
    kept (and gathered across ranks) until `compute` calls it once."""

    full_state_update = False

    def __init__(self, function, **kwargs):
        super().__init__(**kwargs)
        self.function = function
        self.add_state("predictions", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        self.predictions.append(predictions.detach())
        self.targets.append(targets.detach())

    def compute(self) -> torch.Tensor:
        value = self.function(dim_zero_cat(self.predictions), dim_zero_cat(self.targets))
        return torch.as_tensor(value, dtype=torch.float64)


class LossTotals(Metric):
    """The summed loss and sample count of an epoch, in one state (one update per batch,
    one reduction across ranks)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("totals", default=torch.zeros(2, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, count: int) -> None:
        self.totals[0] += loss.detach().double() * count  # in place: no new tensor per batch
        self.totals[1] += count

    def compute(self) -> torch.Tensor:
        return self.totals


class KeptPoints(Metric):
    """Up to `limit` (predicted, true) pairs of the first output column, for a plot."""

    full_state_update = False

    def __init__(self, limit: int, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit
        self.add_state("points", default=[], dist_reduce_fx="cat")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        kept = sum(len(p) for p in self.points)
        if kept < self.limit:  # the host knows the shapes: no device read
            first = predictions.reshape(len(predictions), -1)[:, 0]
            truth = targets.reshape(len(targets), -1)[:, 0].float()
            self.points.append(torch.stack([first.float(), truth], 1)[: self.limit - kept])

    def compute(self) -> torch.Tensor:
        return dim_zero_cat(self.points)[: self.limit]


# What a metric's constructor may need that only the data knows, by the task's kind.
def _filled_arguments(task, num_outputs: int) -> dict:
    if getattr(task, "multi_label", False):
        return {"num_labels": num_outputs, "task": "multilabel"}
    if getattr(task, "has_classes", False):
        return {"num_classes": num_outputs, "task": "multiclass"}
    return {"num_outputs": num_outputs}


def added_metrics(task, num_outputs: int) -> dict[str, Metric]:
    """The metrics of the run's `task.metrics` (kept on the task as `added_metrics`)."""
    nodes = getattr(task, "added_metrics", None) or {}
    return {name: build_metric(name, node, task, num_outputs) for name, node in nodes.items()}


def build_metric(name: str, node, task, num_outputs: int) -> Metric:
    key = f"task.metrics.{name}"
    if name == "loss" or "/" in name:
        raise ConfigValueError(key, name, "a metric name other than loss, without '/'")
    node = dict(node) if not isinstance(node, str) else {"_target_": node}
    target = node.get("_target_")
    if not isinstance(target, str):
        raise ConfigValueError(key, node, "a node with the _target_ of a metric")
    try:
        factory = import_dotted(target)
    except Exception as err:
        raise ConfigValueError(
            f"{key}._target_", target, f"an importable metric class or function ({err})"
        ) from None
    given = {k: v for k, v in node.items() if not k.startswith("_")}
    if not isinstance(factory, type):  # a plain function: called once per epoch
        return FunctionMetric(functools.partial(factory, **given))
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    known = _filled_arguments(task, num_outputs)
    filled = {k: v for k, v in known.items() if k in parameters and k not in given}
    try:
        metric = instantiate(node, **filled)
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigValueError(key, node, f"arguments its class takes ({cause})") from None
    if not isinstance(metric, Metric):
        raise ConfigValueError(
            f"{key}._target_", target, "a torchmetrics.Metric class, or a function"
        )
    return metric


class EpochMetrics:
    """The loss and the metrics of one pass over a loader (`figures`: also the task's
    figure metrics, for the test split's plot; `num_outputs` None: the width of the
    first batch's outputs)."""

    def __init__(self, task, num_outputs: int | None, device: torch.device, figures: bool = False):
        self.task, self.device, self.with_figures = task, device, figures
        # Not a MeanMetric: it looks for NaNs in each batch (a host sync), and without that
        # check (nan_strategy="disable") it drops the weights.
        self.loss = LossTotals().to(device)
        self.named: dict[str, Metric] | None = None
        self.figures: dict[str, Metric] = {}
        if num_outputs is not None:
            self._build(num_outputs)

    def _build(self, num_outputs: int) -> None:
        task, device = self.task, self.device
        named = {**task.metrics(num_outputs), **added_metrics(task, num_outputs)}
        self.named = {k: m.to(device) for k, m in named.items()}
        shown = task.figure_metrics(num_outputs) if self.with_figures else {}
        self.figures = {k: m.to(device) for k, m in shown.items()}

    def update(self, outputs, targets: torch.Tensor, loss: torch.Tensor) -> None:
        if self.named is None:
            self._build(int(outputs.shape[-1]))
        self.loss.update(loss, sample_count(targets))
        predictions = self.task.predictions(outputs)
        for metric in (*self.named.values(), *self.figures.values()):
            metric.update(*self.task.metric_inputs(metric, predictions, targets))

    def compute(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(the metrics by name, with the loss and the sample count `samples`; the figure
        metrics' values, on the host), reduced across the ranks of a distributed run."""
        return reduced("reducing the epoch's metrics", self._compute)

    def _compute(self) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        named = self.named or {}
        loss, count = self.loss.compute()
        values = {"loss": loss / count, **{k: m.compute() for k, m in named.items()}}
        for name, value in values.items():
            if torch.as_tensor(value).numel() != 1:
                raise DataError(
                    f"The metric {name!r} gave {tuple(value.shape)} values, not one number: "
                    "give it an average (average='macro', say) in task.metrics."
                )
        values["samples"] = count
        device = count.device
        numbers = torch.stack(
            [torch.as_tensor(v).to(device, torch.float64).reshape(()) for v in values.values()]
        )
        result = dict(zip(values, numbers.cpu().tolist(), strict=True))  # one read to the host
        result["samples"] = int(result["samples"])
        figures = {k: m.compute().cpu() for k, m in self.figures.items()}
        return result, figures


def metric_names(task, num_outputs: int) -> list[str]:
    """The names a task's epochs log (building the added metrics checks their nodes)."""
    return ["loss", *task.metrics(num_outputs), *added_metrics(task, num_outputs)]
