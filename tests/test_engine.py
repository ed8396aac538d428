"""`fit` on its own: real model, data, optimizer and schedule from the real config, the
run's own callbacks, checkpoints on disk, no MLflow."""

from __future__ import annotations

import pytest
import torch

from experiment.errors import NonFiniteLossError
from experiment.training import resume
from experiment.training.builders import build_parts
from experiment.training.callbacks import Checkpointer, EarlyStopping
from experiment.training.checkpoint import BEST, LAST, load_checkpoint
from experiment.training.engine import FitSettings, fit
from tests.conftest import FAST, compose_config

CPU = torch.device("cpu")


def parts_and_settings(*overrides: str, epochs: int = 4):
    cfg = compose_config([*FAST, f"trainer.epochs={epochs}", *overrides])
    torch.manual_seed(0)
    parts = build_parts(cfg, CPU)
    settings = FitSettings(epochs=epochs, device=CPU, seed=0)
    return parts, settings


def train(parts, settings, callbacks=(), state=None):
    return fit(
        parts.forward, parts.data, parts.optimizer, parts.scheduler, settings, callbacks, state
    )


def checkpointer(parts, directory):
    return Checkpointer(directory, parts.model, parts.optimizer, parts.scheduler)


def test_fit_trains_reports_every_epoch_and_tracks_the_best():
    parts, settings = parts_and_settings()
    seen = []
    state = train(parts, settings, [lambda s: seen.append((s.epoch, dict(s.metrics)))])
    assert [epoch for epoch, _ in seen] == [0, 1, 2, 3]
    assert state.history == [metrics for _, metrics in seen]
    assert state.epochs_run == 4 and not state.stopped_early
    accuracies = [m["val/acc"] for m in state.history]
    assert state.best_value == max(accuracies)
    assert state.best_epoch == accuracies.index(max(accuracies))
    assert state.best_value > 0.5  # four classes: chance is 0.25
    assert state.history[-1]["lr"] < state.history[0]["lr"]  # the cosine schedule stepped


def test_checkpoints_hold_the_best_and_the_last_epoch(tmp_path):
    parts, settings = parts_and_settings()
    state = train(parts, settings, [checkpointer(parts, tmp_path)])
    last, best = load_checkpoint(tmp_path / LAST), load_checkpoint(tmp_path / BEST)
    assert last["epoch"] == 3 and last["history"] == state.history
    assert best["epoch"] == state.best_epoch and best["best_value"] == state.best_value
    for key, tensor in parts.model.state_dict().items():
        assert torch.equal(last["model"][key], tensor), key


def test_an_improving_epochs_last_and_best_checkpoints_are_files_of_their_own(tmp_path):
    parts, settings = parts_and_settings(epochs=1)
    save = checkpointer(parts, tmp_path)
    state = train(parts, settings, [save])  # epoch 0 is the best so far
    assert (tmp_path / LAST).read_bytes() == (tmp_path / BEST).read_bytes()
    assert not (tmp_path / LAST).samefile(tmp_path / BEST)  # damage to one spares the other
    state.epoch, state.best_epoch = 1, 0  # an epoch that did not improve
    state.history.append(state.history[-1])
    save(state)
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 1
    assert load_checkpoint(tmp_path / BEST)["epoch"] == 0  # untouched by last.pt's write


def test_early_stopping_ends_training_after_patience_epochs_without_a_new_best():
    parts, settings = parts_and_settings("optimizer.lr=1e-9", epochs=10)
    settings.min_delta = 0.5  # no epoch improves on the first by that much
    state = train(parts, settings, [EarlyStopping(patience=2)])
    assert state.best_epoch == 0 and state.epochs_run == 3
    assert state.stopped_early and "2 epochs" in state.stop_reason


def learning(history: list[dict]) -> list[float]:
    """The metrics that depend on training alone (not on timing), flat."""
    keys = ("train/loss", "train/acc", "val/loss", "val/acc", "lr")
    return [m[k] for m in history for k in keys]


def stop_after(epoch: int):
    def callback(state) -> None:
        if state.epoch == epoch:
            state.stop_reason = "killed"

    return callback


def test_fit_resumed_from_a_checkpoint_ends_as_the_uninterrupted_run(tmp_path):
    whole, settings = parts_and_settings()
    expected = train(whole, settings)

    first, _ = parts_and_settings()  # trains two epochs, then its process "dies"
    callbacks = [checkpointer(first, tmp_path), stop_after(1)]
    train(first, settings, callbacks)

    fresh, _ = parts_and_settings()  # a new process: new model, optimizer, schedule
    point = resume.find(str(tmp_path / LAST), "", tmp_path, None)
    state = point.checkpoint.restore(fresh.model, fresh.optimizer, fresh.scheduler)
    assert state.epoch == 1 and len(state.history) == 2
    result = train(fresh, settings, [], state)
    assert learning(result.history) == pytest.approx(learning(expected.history), rel=1e-6)
    assert (result.best_epoch, result.best_value) == (expected.best_epoch, expected.best_value)
    for key, tensor in whole.model.state_dict().items():
        torch.testing.assert_close(fresh.model.state_dict()[key], tensor)


def test_a_diverging_run_stops_with_a_clear_error():
    parts, settings = parts_and_settings("optimizer=sgd", "optimizer.lr=1e30", "scheduler=none")
    with pytest.raises(NonFiniteLossError, match="Lower optimizer.lr"):
        train(parts, settings)


def test_a_plateau_schedule_steps_on_the_metric_it_monitors():
    # Only a 99% drop of val/loss counts as progress: after the first epoch (which sets the
    # reference), each epoch halves the rate.
    parts, settings = parts_and_settings(
        "scheduler=plateau",
        "scheduler.schedule.patience=0",
        "scheduler.schedule.factor=0.5",
        "scheduler.schedule.threshold=0.99",
        "optimizer.lr=0.001",
        epochs=4,
    )
    with pytest.raises(ValueError, match="scheduler_monitor"):
        train(parts, settings)
    settings.scheduler_monitor = "val/loss"
    state = train(parts, settings)
    assert [m["lr"] for m in state.history] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])


def test_a_tie_in_the_objective_goes_to_the_epoch_with_the_lower_validation_loss():
    from experiment.training.callbacks import EarlyStopping
    from experiment.training.engine import FitState

    settings = FitSettings(epochs=5, device=CPU, monitor="val/acc", maximize=True)
    state, stop = FitState(), EarlyStopping(patience=2)
    epochs = [(0.90, 0.40), (0.95, 0.30), (0.95, 0.20), (0.95, 0.25), (0.95, 0.21)]
    for epoch, (acc, loss) in enumerate(epochs):
        state.record(epoch, {"val/acc": acc, "val/loss": loss}, settings)
        stop(state)
        if state.stopped_early:
            break
    # Epoch 2 ties epoch 1's accuracy with a lower loss: the new best, and the patience
    # counts from there; epochs 3 and 4 tie with higher losses and do not.
    assert (state.best_epoch, state.best_value) == (2, 0.95)
    assert state.epoch == 4 and state.stopped_early


@pytest.mark.parametrize(
    "sizes,accumulate,whole",
    [
        ([16, 16, 8], 3, [40]),  # one step of an uneven group
        ([10, 10, 10, 10, 7], 2, [20, 20, 7]),  # three steps, the last of one batch
    ],
    ids=["one-uneven-group", "three-steps"],
)
def test_accumulated_batches_step_as_one_batch_of_their_samples(sizes, accumulate, whole):
    """N batches of B accumulated give the parameters of steps on batches of N x B: in
    float64 they agree to 1e-12 (a model without batch norm: its statistics would differ)."""
    import copy

    from torch import nn

    from experiment.training.engine import optimizer_steps, train_one_epoch
    from experiment.training.tasks import Classification

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    twin = copy.deepcopy(model)
    x, y = torch.randn(sum(sizes), 5, dtype=torch.float64), torch.randint(0, 3, (sum(sizes),))

    def batches(lengths):
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        return [(x[s : s + n], y[s : s + n]) for s, n in zip(starts, lengths, strict=True)]

    settings = FitSettings(
        epochs=1, device=CPU, task=Classification(), num_outputs=3, accumulate=accumulate
    )
    steps = []
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    counter = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: steps.append(step) or 1.0)
    train_one_epoch(model, batches(sizes), optimizer, settings, step_scheduler=counter)
    settings.accumulate = 1
    reference = torch.optim.SGD(twin.parameters(), lr=0.5, momentum=0.9)
    train_one_epoch(twin, batches(whole), reference, settings)
    for accumulated, single in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(accumulated, single, rtol=0, atol=1e-12)
    # The schedule stepped once per optimizer step (LambdaLR calls its lambda at creation).
    assert len(steps) - 1 == optimizer_steps(len(sizes), accumulate) == len(whole)


def test_a_run_with_an_average_of_its_weights_resumes_exactly_and_validates_the_average(tmp_path):
    """trainer.ema: validation and checkpoints use the moving average; a checkpoint keeps
    both sets, so a run resumed from one ends as the uninterrupted run, average included."""
    from experiment.training.checkpoint import evaluated_weights
    from experiment.training.engine import evaluate

    ema = ["trainer.ema.decay=0.8", "trainer.ema.start_epoch=2"]

    def with_average(parts, settings):
        settings.averaged, settings.average_from = parts.averaged, 1
        return parts, settings

    whole, settings = with_average(*parts_and_settings(*ema))
    expected = train(whole, settings)
    assert whole.averaged.n_averaged > 0
    val = evaluate(whole.averaged, whole.data.val, device=CPU)
    assert expected.history[-1]["val/loss"] == pytest.approx(val["loss"], rel=1e-6)

    first, settings = with_average(*parts_and_settings(*ema))
    save = Checkpointer(tmp_path, first.model, first.optimizer, first.scheduler, first.averaged)
    train(first, settings, [save, stop_after(2)])  # killed after epoch 3, mid-average
    fresh, settings = with_average(*parts_and_settings(*ema))
    point = resume.find(str(tmp_path / LAST), "", tmp_path, None)
    state = point.checkpoint.restore(fresh.model, fresh.optimizer, fresh.scheduler, fresh.averaged)
    result = train(fresh, settings, [], state)
    assert learning(result.history) == pytest.approx(learning(expected.history), rel=1e-6)
    for key, tensor in whole.averaged.state_dict().items():
        torch.testing.assert_close(fresh.averaged.state_dict()[key], tensor)
    # What the run evaluates on the test split and logs: the averaged weights.
    weights = evaluated_weights(load_checkpoint(tmp_path / LAST))
    assert set(weights) == set(first.model.state_dict())
    averaged = {k.removeprefix("module."): v for k, v in first.averaged.state_dict().items()}
    for key, tensor in weights.items():
        torch.testing.assert_close(tensor, averaged[key])


def test_limit_batches_trains_and_validates_the_first_batches_only():
    from experiment.training.engine import evaluate, train_one_epoch
    from experiment.training.tasks import Classification

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    loader = [(torch.randn(n, 5), torch.randint(0, 3, (n,))) for n in (8, 8, 8, 4)]
    settings = FitSettings(epochs=1, device=CPU, task=Classification(), num_outputs=3)
    settings.limit_batches = 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert train_one_epoch(model, loader, optimizer, settings)["samples"] == 16
    task = Classification()
    limited = evaluate(model, loader, device=CPU, task=task, num_outputs=3, limit=1)
    first = evaluate(model, loader[:1], device=CPU, task=task, num_outputs=3)
    assert limited == first
