"""The entry point: compose the config, build the run, train, evaluate, return the metric.

python -m experiment.train [group=option ...] [key=value ...]
python -m experiment.train -m hparams_search=optuna      # a sweep
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiment import resume, sweep_context
from experiment.builders import (
    build_model,
    build_optimizer,
    build_scheduler,
    is_convnet,
    scheduler_interval,
)
from experiment.checkpoint import BEST, load_checkpoint
from experiment.data import build_data
from experiment.engine import evaluate, fit, warm_up
from experiment.errors import ExperimentError, TrackingError
from experiment.progress import EpochProgress
from experiment.runtime import (
    autocast_dtype,
    peak_memory_mb,
    resolve_device,
    seed_everything,
    stop_on_sigterm,
)
from experiment.schema import register_configs, validate
from experiment.tracking import (
    build_tracker,
    config_params,
    example_batch,
    git_commit,
    redact,
)

log = logging.getLogger("experiment")
register_configs()


def default_run_name(cfg: DictConfig, trial=None) -> str:
    """model-optimizer-lr, plus the trial number in a sweep so no two trials share a name."""
    model = cfg.model._target_.rsplit(".", 1)[-1].lower()
    optimizer = cfg.optimizer._target_.rsplit(".", 1)[-1].lower()
    name = f"{model}-{optimizer}-lr{cfg.optimizer.lr:.3g}"
    return f"{name}-trial{trial.trial.number}" if trial else name


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


@contextlib.contextmanager
def _store_failure_keeps(checkpoint_dir: Path, when: str):
    """A tracking store that fails mid-run: stop with a message that says where the
    trained weights are and how to continue, instead of a traceback."""
    try:
        yield
    except ExperimentError:
        raise
    except Exception as err:  # Ctrl-C (KeyboardInterrupt) is no Exception: it passes
        raise TrackingError(
            f"The MLflow tracking store failed {when}: {type(err).__name__}: "
            f"{redact(str(err)).splitlines()[0] if str(err) else ''}. Nothing trained is "
            f"lost: the checkpoints (last.pt, best.pt) are in {checkpoint_dir}. Once the "
            "store is back, run the same command with trainer.resume=auto to continue."
        ) from None


def _tracked(log_epoch, checkpoint_dir: Path):
    def callback(epoch: int, metrics: dict[str, float]) -> None:
        with _store_failure_keeps(checkpoint_dir, f"in epoch {epoch + 1}"):
            log_epoch(epoch, metrics)

    return callback


def run(cfg: DictConfig) -> float:
    """Train and test one configuration; return the best value of cfg.optimized_metric.

    Inside a sweep (a TrialContext is active) the run also reports to its trial every
    epoch, nests its MLflow run under the study's parent run and tags it with its state.
    """
    trial = sweep_context.current()
    validate(cfg)  # value ranges, before any data is touched
    trainer = cfg.trainer
    device = resolve_device(trainer.device)
    seed_everything(trainer.seed, trainer.deterministic)
    amp_dtype = autocast_dtype(trainer.precision, device)
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    checkpoint_dir = Path(trainer.checkpoint_dir)
    resume_point = None
    if not trial:  # a sweep resumes trials itself
        search = Path(trainer.resume_dir) if trainer.resume_dir else None
        resume_point = resume.find(trainer.resume, resolved, checkpoint_dir, search)
    if resume_point is not None:
        checkpoint_dir = resume_point.checkpoint.parent  # keep writing next to it
        log.info(f"Resuming from {resume_point.checkpoint} at epoch {resume_point.next_epoch + 1}")
    tracker = build_tracker(cfg.tracking)  # an unreachable store fails here, before training

    data = build_data(cfg.dataset, device, seed=trainer.seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device)
    if device.type == "cuda" and is_convnet(model):
        model = model.to(memory_format=torch.channels_last)
        data.use_channels_last()
    optimizer = build_optimizer(cfg.optimizer, model, device)
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=len(data.train))
    # Batch size marked dynamic: the last, smaller batch and eval batches reuse the graph.
    train_model = torch.compile(model, dynamic=True) if trainer.compile else model

    status, progress = "FAILED", None
    try:  # from the start of the MLflow run on, it always gets a final status
        tracker.start(
            run_name=cfg.run_name or default_run_name(cfg, trial),
            params=config_params(cfg),
            tags={
                "device": str(device),
                "git_commit": git_commit() or "none",
                "torch": torch.__version__,
                "process": f"{socket.gethostname()}:{os.getpid()}",
                **(trial.tags if trial else {}),
            },
            texts={
                "config.yaml": OmegaConf.to_yaml(resolved),
                "overrides.yaml": OmegaConf.to_yaml(_overrides()),
            },
            parent_run_id=trial.parent_run_id if trial else None,
            resume_run_id=resume_point.mlflow_run_id if resume_point else None,
        )
        if resume_point is not None:
            tracker.backfill(resume_point.state["history"])
        callbacks = [_tracked(tracker.log_epoch, checkpoint_dir)]
        if trial:
            trial.record_run(tracker.run_id)
            callbacks.append(trial.report(cfg.optimized_metric))
        progress = EpochProgress(
            trainer.epochs,
            cfg.optimized_metric,
            "quiet" if trial and trial.quiet else trainer.progress.value,
            first_epoch=resume_point.next_epoch if resume_point else 0,
        )
        callbacks.insert(0, progress)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if trainer.compile:  # compile outside the timed epochs, and report it on its own
            compile_seconds = warm_up(
                model, train_model, next(iter(data.train)), device=device, amp_dtype=amp_dtype
            )
            tracker.log_metrics({"compile_time_s": compile_seconds})
            log.info(f"torch.compile: {compile_seconds:.1f}s")
        start = time.perf_counter()
        result = fit(
            model,
            data,
            optimizer,
            scheduler,
            epochs=trainer.epochs,
            device=device,
            checkpoint_dir=checkpoint_dir,
            monitor=cfg.optimized_metric,
            maximize=cfg.optimized_direction.value == "maximize",
            scheduler_interval=scheduler_interval(cfg.scheduler),
            scheduler_monitor=cfg.scheduler.get("monitor", "val/loss"),
            amp_dtype=amp_dtype,
            label_smoothing=trainer.label_smoothing,
            grad_clip=trainer.grad_clip,
            patience=trainer.early_stopping_patience,
            min_delta=trainer.early_stopping_min_delta,
            callbacks=callbacks,
            config=resolved,
            train_model=train_model,
            seed=trainer.seed,
            resume_from=resume_point.state if resume_point else None,
            checkpoint_extra={
                "fingerprint": resume.fingerprint(resolved),
                "mlflow_run_id": tracker.run_id,
            },
        )
        train_seconds = time.perf_counter() - start
        # The test split is evaluated once, with the weights that were best on validation.
        model.load_state_dict(load_checkpoint(checkpoint_dir / BEST)["model"])
        test = evaluate(
            model, data.test, device=device, amp_dtype=amp_dtype, num_classes=data.num_classes
        )
        summary = {
            "test/loss": test["loss"],
            "test/acc": test["acc"],
            "best/epoch": result.best_epoch,
            "best/value": result.best_value,
            "train_time_s": train_seconds,
            "epochs_run": result.epochs_run,
            **peak_memory_mb(device),
        }
        with _store_failure_keeps(checkpoint_dir, "after training"):
            tracker.log_metrics(summary)
            if cfg.tracking.log_plots:
                tracker.log_plots(result.history, test["confusion"], data.classes)
            if cfg.tracking.log_model:
                tracker.log_model(model, example_batch(data.val))
        resume.mark_complete(checkpoint_dir)
        status = "FINISHED"
        if trial:
            tracker.set_tags({"optuna.state": sweep_context.COMPLETE})
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as err:
        if trial:  # a pruned trial ended as intended; anything else failed it
            pruned = trial.is_pruned(err)
            status = "FINISHED" if pruned else "FAILED"
            tracker.set_tags(
                {"optuna.state": sweep_context.PRUNED if pruned else sweep_context.FAIL}
            )
        raise
    finally:
        if progress is not None:
            progress.close()
        try:
            tracker.finish(status)
        except Exception as err:  # the store is down: the error that brought us here counts
            log.warning(f"Could not record the run's end in MLflow: {type(err).__name__}")
    log.info(
        f"best {cfg.optimized_metric} {result.best_value:.4f} (epoch {result.best_epoch + 1}); "
        f"test/acc {test['acc']:.4f}; trained {train_seconds:.1f}s over {result.epochs_run} "
        f"epochs{' (early stop)' if result.stopped_early else ''}. "
        f"Checkpoints: {checkpoint_dir}"
    )
    log.info(tracker.describe())
    return float(result.best_value)


# An absolute path, so the console script finds conf/ as `python -m` does.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    stop_on_sigterm()
    try:
        return run(cfg)
    except ExperimentError as err:
        # In a sweep the sweeper records the failure and goes on with the next trial.
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or sweep_context.current():
            raise
        log.error(f"{type(err).__name__}: {err}")
        raise SystemExit(err.exit_code) from None


if __name__ == "__main__":
    main()
