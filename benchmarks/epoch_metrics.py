"""What the epoch metrics cost per batch: torchmetrics objects (the loop's
`EpochMetrics`) against running sums of the same metrics written by hand, measured in the
same run, and against one training step of the project's CNN on digits batches, the work
they ride on.

    .venv/bin/python -m benchmarks.epoch_metrics [--batch-size 128] [--batches 400]

Prints the microseconds per batch of each and the ratios.
"""

from __future__ import annotations

import argparse
import time

import torch

from experiment.training.metrics import EpochMetrics
from experiment.training.tasks import Classification


def hand_sums(outputs, targets, loss, sums):
    """The reference: accuracy and a confusion matrix (for macro F1) as running sums."""
    classes = outputs.shape[1]
    predicted = outputs.argmax(1)
    batch = {
        "loss": loss * len(targets),
        "count": torch.tensor(float(len(targets))),
        "correct": (predicted == targets).sum().float(),
        "confusion": torch.bincount(targets * classes + predicted, minlength=classes * classes)
        .float()
        .view(classes, classes),
    }
    if sums is None:
        return batch
    for key, value in batch.items():
        sums[key] += value
    return sums


def per_batch_us(step, batches: int) -> float:
    for _ in range(20):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(batches):
        step()
    return 1e6 * (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=400)
    args = parser.parse_args()
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    outputs = torch.randn(args.batch_size, 10)
    targets = torch.randint(0, 10, (args.batch_size,))
    loss = torch.tensor(0.5)
    task = Classification()

    metrics = EpochMetrics(task, 10, cpu)
    ours = per_batch_us(lambda: metrics.update(outputs, targets, loss), args.batches)
    state = {"sums": None}

    def by_hand():
        state["sums"] = hand_sums(outputs, targets, loss, state["sums"])

    reference = per_batch_us(by_hand, args.batches)

    from experiment.models.nets import CNN

    model = CNN(num_classes=10, input_shape=(1, 8, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(args.batch_size, 1, 8, 8)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), targets).backward()
        optimizer.step()

    step = per_batch_us(train_step, args.batches // 4)
    print(f"batch {args.batch_size}, 10 classes, {torch.get_num_threads()} threads")
    print(f"hand-written sums (reference)      {reference:8.0f} us/batch")
    print(f"torchmetrics (EpochMetrics.update) {ours:8.0f} us/batch  ratio {ours / reference:.2f}")
    print(f"CNN train step on digits           {step:8.0f} us/batch")
    print(f"metrics' share of a step: reference {reference / step:.1%}, ours {ours / step:.1%}")


if __name__ == "__main__":
    main()
