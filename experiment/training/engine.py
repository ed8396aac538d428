"""The training loop: `train_one_epoch`, `evaluate` and `fit` over epochs.

Metrics are torchmetrics states updated on the device and read once per epoch
(metrics.py): a `.item()` per batch would make the host wait for the GPU after every
step. In a distributed run torchmetrics reduces the states across ranks at that point,
so every rank sees the same epoch metrics. Inputs of any form (a tensor, a tuple, a
dict: data/batches.py) reach the model through `call_model`. What happens between
epochs besides training (checkpoints, early stopping, tracking, pruning, progress) is a
callback.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from experiment.data.batches import call_model, leaves, sample_count
from experiment.errors import NonFiniteLossError
from experiment.runtime.device import autocast, synchronize
from experiment.training.tasks import Classification, float_outputs


@dataclass
class FitSettings:
    """How `fit` trains, besides the objects it trains."""

    epochs: int
    device: torch.device
    monitor: str = "val/acc"  # the epoch metric that decides the best epoch
    maximize: bool = True
    min_delta: float = 0.0  # a smaller change of `monitor` is no improvement
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: plain fp32
    task: object = field(default_factory=Classification)  # loss and metrics (tasks.py)
    # What the task's metrics are built for (classes, target columns); None: the width of
    # the model's outputs.
    num_outputs: int | None = None
    grad_clip: float | None = None  # max global gradient norm
    accumulate: int = 1  # batches whose gradients make one optimizer step
    # The weights' moving average (an AveragedModel, trainer.ema), updated after each
    # optimizer step from epoch `average_from` on, and validated in the model's place.
    averaged: nn.Module | None = None
    average_from: int = 0
    limit_batches: int | None = None  # batches of each split per epoch (None: all)
    detect_anomaly: bool = False  # autograd's anomaly mode: the op that made a NaN named
    after_batch: Callable[[], None] | None = None  # called after each training batch
    scheduler_interval: str = "epoch"  # step the schedule after each epoch or each batch
    scheduler_monitor: str | None = None  # the epoch metric a plateau schedule watches
    seed: int | None = None  # with a seed, each epoch's randomness depends on (seed, epoch)

    @classmethod
    def of_run(cls, run, device, task, amp_dtype, num_outputs: int, averaged=None) -> FitSettings:
        """How `fit` trains `run` (an entered RunConfig) on `device`; `averaged`: the
        weights' moving average where trainer.ema is on."""
        regularization, monitor = run.regularization, run.monitor
        return cls(
            epochs=run.trainer.epochs,
            device=device,
            monitor=monitor.metric,
            maximize=monitor.maximize,
            min_delta=regularization.early_stopping.min_delta,
            amp_dtype=amp_dtype,
            task=task,
            num_outputs=num_outputs,
            grad_clip=regularization.grad_clip,
            accumulate=run.trainer.accumulate_grad_batches,
            averaged=averaged,
            average_from=run.trainer.ema.start_epoch - 1,
            limit_batches=run.trainer.limit_batches,
            detect_anomaly=run.trainer.detect_anomaly,
            scheduler_interval=str(run.scheduler.interval),
            # Only a plateau schedule watches a metric (PlateauSchedulerConf.monitor).
            scheduler_monitor=getattr(run.scheduler, "monitor", None),
            seed=run.trainer.seed,
        )


@dataclass
class FitState:
    """What the loop knows after an epoch. Callbacks read it (and may set `stop_reason`);
    checkpoints store it, so a resumed run continues from it."""

    epoch: int = -1  # the last finished epoch
    metrics: dict[str, float] = field(default_factory=dict)
    best_value: float | None = None
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str | None = None

    @property
    def improved(self) -> bool:
        return self.best_epoch == self.epoch

    @property
    def epochs_run(self) -> int:
        return self.epoch + 1

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason is not None

    def record(self, epoch: int, metrics: dict[str, float], settings: FitSettings) -> None:
        self.epoch, self.metrics = epoch, metrics
        self.history.append(metrics)
        value = metrics[settings.monitor]
        change = value - self.best_value if self.best_value is not None else math.inf
        better = (change if settings.maximize else -change) > settings.min_delta
        # With min_delta set, changes that small (a tie too) are no improvement.
        tie = change == 0 and settings.min_delta == 0 and self._lower_loss(metrics)
        if better or tie or self.best_epoch < 0:
            self.best_value, self.best_epoch = value, epoch

    def _lower_loss(self, metrics: dict[str, float]) -> bool:
        """A tie in the objective (the same accuracy, say) goes to the epoch with the
        lower validation loss (the model that is surer of its answers), and early stopping
        counts from there."""
        best = self.history[self.best_epoch] if self.best_epoch < len(self.history) else {}
        return metrics.get("val/loss", math.inf) < best.get("val/loss", math.inf)


EpochCallback = Callable[[FitState], None]


def train_one_epoch(
    model: nn.Module, loader, optimizer, settings: FitSettings, step_scheduler=None, average=None
) -> dict[str, float]:
    """One epoch; `average`: an AveragedModel updated after each optimizer step."""
    from experiment.training.metrics import EpochMetrics  # torchmetrics: ~1.3 s to import

    model.train()
    task = settings.task
    metrics = EpochMetrics(task, settings.num_outputs, settings.device)
    batches, group = limited(len(loader), settings.limit_batches), settings.accumulate
    anomalies = _anomalies_named if settings.detect_anomaly else contextlib.nullcontext
    for index, (inputs, targets) in enumerate(itertools.islice(loader, batches)):
        if index % group == 0:
            optimizer.zero_grad(set_to_none=True)
            samples = 0  # in this group of batches
        last_of_group = (index + 1) % group == 0 or index + 1 == batches
        # Under DDP, gradients are averaged across ranks once per optimizer step.
        syncing = contextlib.nullcontext() if last_of_group else _no_sync(model)
        with syncing, anomalies():
            with autocast(settings.device, settings.amp_dtype):
                outputs = call_model(model, inputs)
                loss = task.loss(outputs, targets)
            if group == 1:
                loss.backward()
            else:  # each sample weighs the same, however the group's batches are sized
                count = sample_count(targets)
                samples += count
                (loss * count).backward()
        if last_of_group:
            if group > 1:
                _divide_gradients(model, samples)
            if settings.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            if average is not None:
                average.update_parameters(model)
            if step_scheduler is not None:  # per-step schedules (one-cycle)
                step_scheduler.step()
        metrics.update(float_outputs(outputs), targets, loss)
        if settings.after_batch is not None:  # the profiler's step (trainer.profile_steps)
            settings.after_batch()
    values, _ = metrics.compute()
    return values


def limited(batches: int, limit: int | None) -> int:
    """The batches an epoch takes of a split of `batches` (trainer.limit_batches)."""
    return batches if limit is None else min(batches, limit)


@contextlib.contextmanager
def _anomalies_named():
    """autograd's anomaly mode, whose error names the backward operation that returned
    NaN: raised as NonFiniteLossError with that name."""
    try:
        with torch.autograd.detect_anomaly(check_nan=True):
            yield
    except RuntimeError as err:
        if "nan values" not in str(err):
            raise
        raise NonFiniteLossError(
            f"Anomaly detection (trainer.detect_anomaly): {str(err).splitlines()[0]} "
            "Look at the inputs and weights of that operation; lower optimizer.lr or set "
            "regularization.grad_clip if the weights diverged."
        ) from None


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer steps of an epoch of `batches` batches, `accumulate` batches a step."""
    return math.ceil(batches / accumulate)


def _no_sync(model: nn.Module):
    """DistributedDataParallel's `no_sync` (no gradient all-reduce on this backward)."""
    return model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext()


@torch.no_grad()
def _divide_gradients(model: nn.Module, samples: int) -> None:
    """Summed per-sample-weighted gradients into the mean over the group's samples (of
    every rank: under DDP, the ranks' shares of a last batch can differ by a sample, and a
    rank dividing by its own count would step apart from the others)."""
    divisor = _per_rank_samples(model, samples)
    for parameter in model.parameters():
        if parameter.grad is not None:
            parameter.grad.div_(divisor)


def _per_rank_samples(model: nn.Module, samples: int) -> int | torch.Tensor:
    """The group's samples over all ranks, divided by the ranks: what DDP's gradients,
    already averaged over the ranks, divide by to become the mean over every sample."""
    if not hasattr(model, "no_sync"):
        return samples
    import torch.distributed as dist

    device = next(model.parameters()).device
    total = torch.full((), float(samples), device=device)  # a fill, not a host copy
    dist.all_reduce(total)
    return total / dist.get_world_size()


def evaluate(
    model: nn.Module, loader, *, device, amp_dtype=None, task=None, num_outputs=None, limit=None
):
    """The task's metrics over `loader` (default task: classification); `limit`: its
    first batches only (trainer.limit_batches)."""
    values, _ = evaluate_with_figures(
        model,
        loader,
        device=device,
        amp_dtype=amp_dtype,
        task=task,
        num_outputs=num_outputs,
        limit=limit,
    )
    return values


@torch.no_grad()
def evaluate_with_figures(
    model: nn.Module,
    loader,
    *,
    device,
    amp_dtype=None,
    task=None,
    num_outputs=None,
    figures=False,
    limit=None,
) -> tuple[dict, dict]:
    """The task's metrics over `loader` (without the sample count) and, with `figures`,
    its figure metrics' values (a classification's confusion matrix, say)."""
    from experiment.training.metrics import EpochMetrics

    model.eval()
    task = task or Classification()
    metrics = EpochMetrics(task, num_outputs, device, figures=figures)
    for inputs, targets in loader if limit is None else itertools.islice(loader, limit):
        with autocast(device, amp_dtype):
            outputs = call_model(model, inputs)
        outputs = float_outputs(outputs)
        metrics.update(outputs, targets, task.eval_loss(outputs, targets))
    values, drawn = metrics.compute()
    values.pop("samples")
    return values, drawn


def warm_up(model: nn.Module, train_model: nn.Module, batch, *, device, amp_dtype=None) -> float:
    """Run one train and one eval step so a compiled model compiles before the timed
    epochs; return the seconds it took. The model's weights and buffers are restored."""
    state = copy.deepcopy(model.state_dict())
    inputs, _ = batch
    start = time.perf_counter()
    train_model.train()
    with autocast(device, amp_dtype):
        outputs = call_model(train_model, inputs)
        loss = sum(o.float().square().mean() for o in leaves(outputs))  # any loss will do
    loss.backward()
    with torch.no_grad(), autocast(device, amp_dtype):
        train_model.eval()
        call_model(train_model, inputs)
    synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return seconds


@torch.no_grad()
def latency_per_image_ms(model: nn.Module, inputs, *, device, amp_dtype=None) -> float:
    """Inference time per sample (milliseconds) for a batch of `inputs` (of any form):
    the median of a few timed passes after a warm-up one."""
    model.eval()
    timings = []
    for _ in range(6):
        start = time.perf_counter()
        with autocast(device, amp_dtype):
            call_model(model, inputs)
        synchronize(device)
        timings.append(time.perf_counter() - start)
    return 1000.0 * sorted(timings[1:])[2] / sample_count(inputs)


def seed_epoch(data, seed: int, epoch: int) -> None:
    """Seed everything random in one epoch from (seed, epoch)."""
    epoch_seed = seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)  # dropout and other in-model randomness, on every device
    data.seed_epoch(epoch_seed)


def fit(
    model: nn.Module,
    data,
    optimizer,
    scheduler,
    settings: FitSettings,
    callbacks: Sequence[EpochCallback] = (),
    state: FitState | None = None,
) -> FitState:
    """Train from `state` (a new run, or one restored from a checkpoint) to
    `settings.epochs` or until a callback sets `state.stop_reason`; return the last state.

    `model` is what runs forward (it may be a compiled wrapper). With `settings.seed`,
    every epoch draws its randomness (shuffling, augmentation, dropout) from seed and
    epoch alone, so a resumed run trains exactly as the uninterrupted run would have.
    """
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if plateau and settings.scheduler_monitor is None:
        raise ValueError("A plateau schedule steps on a metric: set settings.scheduler_monitor")
    state = state if state is not None else FitState()
    step_scheduler = scheduler if settings.scheduler_interval == "step" else None
    for epoch in range(state.epoch + 1, settings.epochs):
        if settings.seed is not None:
            seed_epoch(data, settings.seed, epoch)
        lr = optimizer.param_groups[-1]["lr"]  # the head's rate when the backbone has its own
        start = time.perf_counter()
        average = settings.averaged if epoch >= settings.average_from else None
        train = train_one_epoch(model, data.train, optimizer, settings, step_scheduler, average)
        train_time = time.perf_counter() - start
        if not math.isfinite(train["loss"]):
            raise NonFiniteLossError(
                f"Training loss became {train['loss']} in epoch {epoch}: the run diverged. "
                f"Lower optimizer.lr (now {lr:g}) or set regularization.grad_clip."
            )
        val = evaluate(
            average if average is not None else model,  # the averaged weights, once on
            data.val,
            device=settings.device,
            amp_dtype=settings.amp_dtype,
            task=settings.task,
            num_outputs=settings.num_outputs,
            limit=settings.limit_batches,
        )
        metrics = {
            **{f"train/{k}": v for k, v in train.items() if k != "samples"},
            **{f"val/{k}": v for k, v in val.items()},
            "lr": lr,
            "epoch_time_s": time.perf_counter() - start,
            "samples_per_s": train["samples"] / train_time,
        }
        if scheduler is not None and step_scheduler is None:  # a plateau's steps on a metric
            scheduler.step(metrics[settings.scheduler_monitor]) if plateau else scheduler.step()
        state.record(epoch, metrics, settings)
        for callback in callbacks:
            callback(state)
        if state.stop_reason is not None:
            break
    return state
