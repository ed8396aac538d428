"""One run: build its parts from the config, train, evaluate the best model on the test
split, track everything in MLflow, return the objective. `experiment.train` is its command
line, `experiment.run` its Python API, a sweep's trials call it as their task."""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from functools import partial
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig

from experiment.config.run_config import RunConfig, overrides_yaml
from experiment.data import sources
from experiment.data.batches import map_inputs
from experiment.data.loaders import example_batch
from experiment.errors import ConfigValueError
from experiment.models import deployable, pretrained
from experiment.runtime import distributed
from experiment.runtime.device import (
    autocast_dtype,
    peak_memory_mb,
    resolve_device,
    seed_everything,
)
from experiment.runtime.distributed import Ranks
from experiment.sweep import context as sweep_context
from experiment.tracking import lineage, plots
from experiment.tracking.run_record import (
    epoch_logger,
    final_status,
    run_record,
    store_failure_keeps,
)
from experiment.tracking.tags import PRESET_TAG
from experiment.tracking.tracker import NullTracker, build_tracker
from experiment.training import resume
from experiment.training.builders import Parts, build_parts, build_task, load_source
from experiment.training.callbacks import Checkpointer, EarlyStopping, OverfitCheck
from experiment.training.checkpoint import (
    BEST,
    LAST,
    check_folder,
    evaluated_weights,
    load_checkpoint,
)
from experiment.training.engine import (
    FitSettings,
    FitState,
    evaluate_with_figures,
    fit,
    latency_per_image_ms,
    warm_up,
)
from experiment.training.profiling import profiler_of_run
from experiment.training.progress import EpochProgress
from experiment.training.run_lock import RunLock

log = logging.getLogger("experiment")


def run(cfg) -> float | list[float]:
    """Train and test one configuration (a composed DictConfig, or an entered RunConfig);
    return the best value of `optimized_metric` (for a list of metrics, their values at
    the best epoch of the first: see `objective`).

    Inside a sweep the current TrialContext adds what a trial needs (reporting to the
    trial, the parent run, the trial's tags and state); outside one, nothing is added.
    Under torchrun every rank runs this; rank 0 alone tracks, checkpoints and reports.
    """
    run_config = RunConfig.enter(cfg)  # typed and checked, before any data is touched
    with distributed.joined(run_config.trainer, run_config.dataset.batch_size) as (ranks, device):
        if device is None:  # not under torchrun: the run's own choice
            device = resolve_device(run_config.trainer.device)
        try:
            return train_and_test(run_config, ranks, device)
        except KeyboardInterrupt as stop:  # a sweep says for itself how it continues
            if not sweep_context.current():
                stop.add_note("the same command with trainer.resume=auto continues it")
            raise


def train_and_test(run: RunConfig, ranks: Ranks, device: torch.device) -> float | list[float]:
    trial = sweep_context.current() or sweep_context.STANDALONE
    seed_everything(run.trainer.seed, run.trainer.deterministic)
    fingerprints = distributed.same_config_on_all_ranks(run.fingerprint)
    point, continued_run_id = distributed.from_main(
        resume.for_run(trial, run.trainer, run.fingerprint) if ranks.main else (None, None)
    )
    checkpoint_dir = point.folder if point else Path(run.trainer.checkpoint_dir)
    lock = contextlib.nullcontext()
    if ranks.main:  # it is rank 0 that writes them, holding the folder till the run's end
        check_folder(checkpoint_dir)
        lock = RunLock(checkpoint_dir, run.fingerprint).hold(take_over=bool(trial.continues))
    with lock:
        # An unreachable store fails here, before training; other ranks track nothing.
        tracker = build_tracker(run.tracking) if ranks.main else NullTracker()
        task = build_task(run.task)
        parts = build_parts(run, device, ranks, task)
        check_objectives_exist(run, task, parts.data.num_outputs)
        state = None
        if point is not None and point.checkpoint is not None:
            state = point.checkpoint.restore(
                parts.model, parts.optimizer, parts.scheduler, parts.averaged
            )
        amp_dtype = autocast_dtype(run.trainer.precision, device)
        settings = FitSettings.of_run(
            run, device, task, amp_dtype, parts.data.num_outputs, parts.averaged
        )
        progress = EpochProgress(
            run.trainer.epochs,
            settings.monitor,
            "quiet" if trial.quiet or not ranks.main else run.trainer.progress,
            first_epoch=point.next_epoch if point else 0,
            metric=task.curve_metric,
        )
        with final_status(tracker, trial.outcome), contextlib.closing(progress):
            tags = {**ranks.tags(fingerprints), **_preset_tags()}
            record = run_record(run, device, trial, point, tags, _overrides(), continued_run_id)
            start_tracking(tracker, record, run, parts, trial, checkpoint_dir, ranks)
            if ranks.main:  # the run a resume continues, known before its first checkpoint
                lock.record(tracker.run_id)
            callbacks = epoch_callbacks(run, parts, checkpoint_dir, tracker, progress, trial)
            result, summary = train(run, parts, settings, callbacks, state, tracker, trial, ranks)
            test, test_figures = evaluate_best(parts, checkpoint_dir, settings, ranks, run.dataset)
            summary.update(final_metrics(result, test, parts, settings, run, trial.wanted_measures))
            if ranks.main:
                trial.record_measures(run_measures(result, summary))
            with store_failure_keeps(checkpoint_dir, "after training"):
                # The curves' metric, and what draws the task's test figure into a folder.
                figure = (task.curve_metric, partial(task.plot, test_figures, parts.data.classes))
                package = partial(deployable.of_run, parts.model, parts.data, task)
                tracker.log_final(summary, result.history, figure, package)
            if ranks.main:
                resume.mark_complete(checkpoint_dir)
        report(result, test, summary, settings, task, checkpoint_dir, tracker)
        return objective(run, result, summary)


def epoch_callbacks(run, parts, checkpoint_dir: Path, tracker, progress, trial) -> list:
    """What runs after every epoch, in order: checkpoints first (a pruned or stopped run
    has its last epoch saved), early stopping last."""
    monitor = run.monitor.metric
    return [
        Checkpointer(
            checkpoint_dir,
            parts.model,
            parts.optimizer,
            parts.scheduler,
            parts.averaged,
            config=run.resolved,
            fingerprint=run.fingerprint,
            mlflow_run_id=tracker.run_id,
        ),
        progress,
        epoch_logger(tracker, checkpoint_dir),
        *trial.callbacks(monitor),
        EarlyStopping(run.regularization.early_stopping.patience),
        *overfit_check(run.trainer),
    ]


def overfit_check(trainer) -> list:
    if trainer.overfit_batches is None:
        return []
    return [OverfitCheck(trainer.overfit_batches, trainer.overfit_loss, trainer.epochs)]


def start_tracking(tracker, record: dict, run, parts, trial, checkpoint_dir: Path, ranks):
    """Start the MLflow run (or reopen the one it continues); on rank 0, log its data as
    its input (a continued run has it already) and keep its id and checkpoint folder on
    the trial, for a retry to continue."""
    tracker.start(**record)
    if not ranks.main:
        return
    if record["resume_run_id"] is None:
        tracker.log_dataset(*lineage.dataset_input(run.resolved["dataset"]["source"], parts.data))
    trial.record_run(tracker.run_id, str(checkpoint_dir.resolve()))


def train(run: RunConfig, parts: Parts, settings, callbacks, state, tracker, trial, ranks):
    """The epochs, from `state` (a resumed run's) or the first: the loop's final state
    and the summary so far (training time; compile time, logged on its own)."""
    log_trainable = trainable_logger(tracker)
    trainable = pretrained.trainable_parameters(parts.model)
    log_trainable(trainable, state.epoch + 1 if state else 0)
    if ranks.main:  # known before any epoch, so a pruned trial has it too
        trial.record_measures({"model/params": trainable})
        if state is not None:  # a retried trial's pruner sees the epochs it continues
            trial.restore_reports(state.history, settings.monitor)
    if ranks.distributed:  # rank 0 decides; every rank follows (and none hangs)
        callbacks = [distributed.OnMainRank(callbacks, ranks)]
    callbacks += pretrained.thaw_callbacks(run.model, parts.model, state, log_trainable)
    if settings.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(settings.device)
    if run.trainer.compile:  # compile outside the timed epochs, and report it on its own
        tracker.log_metrics({"compile_time_s": compile_now(parts, settings)})
    folder = _output_dir(run) / "profile"
    profiler = profiler_of_run(
        run.trainer.profile_steps if ranks.main else None, folder, settings.device
    )
    start = time.perf_counter()
    with profiler or contextlib.nullcontext():
        settings.after_batch = profiler.step if profiler else None
        result = fit(
            parts.forward, parts.data, parts.optimizer, parts.scheduler, settings, callbacks, state
        )
    seconds = time.perf_counter() - start  # the profiler's own time included
    if profiler and profiler.written:
        tracker.log_artifacts(folder, "profile")
    return result, {"train_time_s": seconds}


def report(result: FitState, test: dict, summary: dict, settings, task, checkpoint_dir, tracker):
    shown = settings.monitor.removeprefix("val/")
    shown = shown if shown in test else task.curve_metric
    log.info(
        "best %s %.4f (epoch %s); test/%s %.4f; trained %.1fs over %s epochs%s. Checkpoints: %s",
        settings.monitor,
        result.best_value,
        result.best_epoch + 1,
        shown,
        test[shown],
        summary["train_time_s"],
        result.epochs_run,
        " (early stop)" if result.stopped_early else "",
        checkpoint_dir,
    )
    log.info(tracker.describe())


def trainable_logger(tracker):
    def log_trainable(count: int, epoch: int) -> None:
        tracker.log_epoch(epoch, {"model/trainable_params": count})

    return log_trainable


def check_objectives_exist(run: RunConfig, task, num_outputs: int) -> None:
    """Every validation metric among the objectives (and a plateau schedule's monitor) is
    one the task computes (known once the data is: top5_acc needs more than 5 classes);
    refused before training."""
    # torchmetrics (~1.3 s) is imported by a run that gets this far, not by a command
    # that stops on its settings or only coordinates a sweep.
    from experiment.training.metrics import metric_names

    names = [f"val/{name}" for name in metric_names(task, num_outputs)]
    watched = [("optimized_metric", o.metric) for o in run.objectives]
    if getattr(run.scheduler, "monitor", None) is not None:  # a plateau schedule's metric
        watched.append(("scheduler.monitor", run.scheduler.monitor))
    for key, metric in watched:
        if metric.startswith("val/") and metric not in names:
            raise ConfigValueError(
                key,
                metric,
                f"a metric of task={task.name}: {', '.join(names)} (or a run measure; "
                "task.metrics adds metrics of your own)",
            )


def compile_now(parts: Parts, settings: FitSettings) -> float:
    seconds = warm_up(
        parts.model,
        parts.forward,
        next(iter(parts.data.train)),
        device=settings.device,
        amp_dtype=settings.amp_dtype,
    )
    log.info("torch.compile: %.1fs", seconds)
    return seconds


def evaluate_best(
    parts: Parts, checkpoint_dir: Path, settings: FitSettings, ranks, dataset
) -> tuple[dict, dict]:
    """The test split, evaluated once, with the weights that were best on validation (the
    last epoch's where validation was trained on; their moving average with trainer.ema),
    read by rank 0, which wrote them, and copied to the other ranks. The model keeps them:
    they are what is logged."""
    if ranks.main:
        weights = LAST if dataset.train_on_val else BEST
        parts.model.load_state_dict(evaluated_weights(load_checkpoint(checkpoint_dir / weights)))
    distributed.copy_weights_from_main(parts.model)
    return evaluate_with_figures(
        parts.model,
        parts.data.test,
        device=settings.device,
        amp_dtype=settings.amp_dtype,
        task=settings.task,
        num_outputs=settings.num_outputs,
        figures=True,
        limit=settings.limit_batches,
    )


def final_metrics(
    result: FitState,
    test: dict,
    parts: Parts,
    settings: FitSettings,
    run: RunConfig,
    wanted: tuple[str, ...] = (),
) -> dict[str, float]:
    """The run's summary metrics; `wanted`: measures a sweep's constraints name, computed
    even where no objective needs them (the latency)."""
    metrics = {
        **{f"test/{k}": v for k, v in test.items()},
        "best/epoch": result.best_epoch,
        "best/value": result.best_value,
        "epochs_run": result.epochs_run,
        "model/params": sum(p.numel() for p in parts.model.parameters() if p.requires_grad),
        **peak_memory_mb(settings.device),
    }
    if "model/latency_ms" in wanted or run.wants("model/latency_ms"):
        inputs = map_inputs(lambda x: x.to(settings.device), example_batch(parts.data.val, 64))
        metrics["model/latency_ms"] = latency_per_image_ms(
            parts.model, inputs, device=settings.device, amp_dtype=settings.amp_dtype
        )
    return metrics


def run_measures(result: FitState, summary: dict) -> dict[str, float]:
    """What a sweep's constraints may bound: the run's own measures and the best epoch's
    metrics; never a test metric (the test split is not used for selection)."""
    best_epoch = result.history[result.best_epoch] if result.history else {}
    measures = {**best_epoch, **summary}
    return {
        name: float(value)
        for name, value in measures.items()
        if not name.startswith("test/") and isinstance(value, int | float)
    }


def objective(run: RunConfig, result: FitState, summary: dict) -> float | list[float]:
    """The value a sweep optimizes: the best epoch's value of `optimized_metric`; for a
    list, each entry's value at the best epoch of the first (validation metrics) or the
    run's own measure (model/params, model/latency_ms, train_time_s)."""
    if not run.several_objectives:
        return float(result.best_value)
    best_epoch = result.history[result.best_epoch]
    return [float(best_epoch.get(o.metric, summary.get(o.metric))) for o in run.objectives]


# What a tracked run imports on first use (the store's schema check, the model flavour
# and its signature, GitPython for the source tags, matplotlib): ~2 s of a first run.
TRACKED_RUN_IMPORTS = (
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.pytorch",
    "mlflow.pyfunc",
    "mlflow.models.signature",
    "git",
    "matplotlib.backends.backend_agg",
)


def preload_sweep_workers(cfg) -> None:
    """Called by a parallel sweep once in its own process, before it forks its workers
    from it (the sweeper looks for this name in the task's module), with the sweep's
    config: what a run imports and computes on first use, done once for all workers
    instead of once in each. Nothing that opens a store or a file: those stay per process
    (`warm_up_sweep_worker`)."""
    run_config = RunConfig.enter(cfg)
    import torch._dynamo  # noqa: F401  (the first optimizer built imports it: ~1.5 s)
    import torchmetrics  # noqa: F401  (every run's epoch metrics: ~1.3 s)

    if run_config.tracking.enabled:
        for name in TRACKED_RUN_IMPORTS:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
        if run_config.tracking.log_model:  # MLflow maps every installed file once: ~1.3 s
            from mlflow.utils.requirements_utils import warn_dependency_requirement_mismatches

            warn_dependency_requirement_mismatches(["torch"])


def warm_up_sweep_worker(cfg) -> None:
    """Called by each worker of a parallel sweep once, before its first trial, with the
    sweep's config (the sweeper looks for this name in the task's module): the MLflow
    store opened (created if new, while the sweep opens its study) and its experiment
    looked up, the dataset parsed into this process's cache, what a run imports on first
    use imported (where the workers were not forked from a process that did it already,
    `preload_sweep_workers`) and the fonts loaded, so the first trial costs what the next
    ones do."""
    run_config = RunConfig.enter(cfg)
    preload_sweep_workers(cfg)
    build_tracker(run_config.tracking)
    task = build_task(run_config.task)
    sources.as_splits(load_source(run_config.dataset), run_config.dataset, task)
    if run_config.tracking.enabled and run_config.tracking.log_plots:
        plots.warm_up()  # the first figure loads fonts: ~0.4 s


def _overrides() -> str:
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return overrides_yaml(overrides)


def _preset_tags() -> dict[str, str]:
    """The `experiment=` preset the run was composed with, as a tag (compare shows it)."""
    if not HydraConfig.initialized():
        return {}
    preset = HydraConfig.get().runtime.choices.get("experiment")
    return {PRESET_TAG: str(preset)} if preset else {}


def _output_dir(run: RunConfig) -> Path:
    """The run's Hydra output folder (outside Hydra: its checkpoint folder's parent)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(run.trainer.checkpoint_dir).parent
