"""The training loop: `train_one_epoch`, `evaluate` and `fit` over epochs.

Metrics are summed on the device and read once per epoch: a `.item()` per batch would
make the host wait for the GPU after every step.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from experiment.checkpoint import BEST, LAST, save_checkpoint
from experiment.errors import NonFiniteLossError
from experiment.runtime import autocast, synchronize

EpochCallback = Callable[[int, dict[str, float]], None]


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer,
    *,
    device,
    amp_dtype=None,
    label_smoothing=0.0,
    grad_clip=None,
    step_scheduler=None,
) -> dict[str, float]:
    model.train()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    for images, labels in loader:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if step_scheduler is not None:  # per-batch schedules (one-cycle)
            step_scheduler.step()
        loss_sum += loss.detach().float() * len(labels)
        correct += (logits.argmax(1) == labels).sum()
        seen += len(labels)
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "samples": seen}


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, *, device, amp_dtype=None, num_classes: int | None = None
) -> dict:
    """Loss and accuracy; with `num_classes`, also the confusion matrix (rows: true)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    pairs = torch.zeros((num_classes or 0) ** 2, device=device, dtype=torch.long)
    seen = 0
    for images, labels in loader:
        with autocast(device, amp_dtype):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        predicted = logits.argmax(1)
        correct += (predicted == labels).sum()
        if num_classes:
            pairs += torch.bincount(labels * num_classes + predicted, minlength=len(pairs))
        seen += len(labels)
    result = {"loss": loss_sum.item() / seen, "acc": correct.item() / seen}
    if num_classes:
        result["confusion"] = pairs.view(num_classes, num_classes).cpu().numpy()
    return result


def warm_up(model: nn.Module, train_model: nn.Module, batch, *, device, amp_dtype=None) -> float:
    """Run one train and one eval step so a compiled model compiles before the timed
    epochs; return the seconds it took. The model's weights and buffers are restored."""
    state = copy.deepcopy(model.state_dict())
    images, labels = batch
    start = time.perf_counter()
    train_model.train()
    with autocast(device, amp_dtype):
        loss = F.cross_entropy(train_model(images), labels)
    loss.backward()
    with torch.no_grad(), autocast(device, amp_dtype):
        train_model.eval()
        train_model(images)
    synchronize(device)
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return seconds


def seed_epoch(data, seed: int, epoch: int) -> None:
    """Seed everything random in one epoch from (seed, epoch)."""
    epoch_seed = seed * 100_003 + epoch
    torch.manual_seed(epoch_seed)  # dropout and other in-model randomness, on every device
    data.seed_epoch(epoch_seed)


@dataclass
class FitResult:
    best_value: float
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    model: nn.Module,
    data,
    optimizer,
    scheduler,
    *,
    epochs: int,
    device,
    checkpoint_dir: Path,
    monitor: str = "val/acc",
    maximize: bool = True,
    scheduler_interval: str = "epoch",
    scheduler_monitor: str = "val/loss",
    amp_dtype=None,
    label_smoothing: float = 0.0,
    grad_clip: float | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    callbacks: tuple[EpochCallback, ...] = (),
    config: dict | None = None,
    train_model: nn.Module | None = None,
    seed: int | None = None,
    resume_from: dict | None = None,
    checkpoint_extra: dict | None = None,
) -> FitResult:
    """Train for `epochs`, keeping `last.pt` and `best.pt` (by `monitor`) in checkpoint_dir.

    `train_model` is what runs forward (a compiled wrapper, say); `model` is what is saved.
    Callbacks get (epoch, metrics) after each epoch: tracking, pruning.
    With `seed`, every epoch draws its randomness (shuffling, augmentation, dropout) from
    seed and epoch alone, so a run resumed from a checkpoint (`resume_from`, a loaded
    last.pt) trains exactly as the uninterrupted run would have.
    """
    train_model = model if train_model is None else train_model
    step_scheduler = scheduler if scheduler_interval == "step" else None
    sign = 1.0 if maximize else -1.0
    best_value, best_epoch, history, first_epoch = -math.inf * sign, -1, [], 0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        if scheduler is not None and resume_from.get("scheduler") is not None:
            scheduler.load_state_dict(resume_from["scheduler"])
        best_value, best_epoch = resume_from["best_value"], resume_from["best_epoch"]
        history, first_epoch = list(resume_from["history"]), resume_from["epoch"] + 1
    for epoch in range(first_epoch, epochs):
        if seed is not None:
            seed_epoch(data, seed, epoch)
        lr = optimizer.param_groups[0]["lr"]
        start = time.perf_counter()
        train = train_one_epoch(
            train_model,
            data.train,
            optimizer,
            device=device,
            amp_dtype=amp_dtype,
            label_smoothing=label_smoothing,
            grad_clip=grad_clip,
            step_scheduler=step_scheduler,
        )
        train_time = time.perf_counter() - start
        if not math.isfinite(train["loss"]):
            raise NonFiniteLossError(
                f"Training loss became {train['loss']} in epoch {epoch}: the run diverged. "
                f"Lower optimizer.lr (now {lr:g}) or set regularization.grad_clip."
            )
        val = evaluate(train_model, data.val, device=device, amp_dtype=amp_dtype)
        metrics = {
            "train/loss": train["loss"],
            "train/acc": train["acc"],
            "val/loss": val["loss"],
            "val/acc": val["acc"],
            "lr": lr,
            "epoch_time_s": time.perf_counter() - start,
            "samples_per_s": train["samples"] / train_time,
        }
        history.append(metrics)
        if scheduler is not None and step_scheduler is None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(metrics[scheduler_monitor])
            else:
                scheduler.step()

        if sign * (metrics[monitor] - best_value) > min_delta or best_epoch < 0:
            best_value, best_epoch = metrics[monitor], epoch
        state = dict(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            epoch=epoch,
            metrics=metrics,
            best_value=best_value,
            best_epoch=best_epoch,
            history=history,
            config=config or {},
            extra=checkpoint_extra or {},
        )
        if best_epoch == epoch:
            save_checkpoint(checkpoint_dir / BEST, **state)
        save_checkpoint(checkpoint_dir / LAST, **state)  # last: a resume finds best.pt whole
        for callback in callbacks:
            callback(epoch, metrics)
        if patience is not None and epoch - best_epoch >= patience:
            return FitResult(best_value, best_epoch, epoch + 1, True, history)
    return FitResult(best_value, best_epoch, epochs, False, history)
