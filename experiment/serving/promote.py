"""`experiment-promote`: a sweep's trial retrained over seeds and registered as the champion.

    experiment-promote --study NAME [--storage URL]        # the best trial of a study
    experiment-promote --parent-run ID --trial 7 --seeds 5 --train-on-val --name digits
    experiment-promote --study NAME trainer.epochs=40      # Hydra overrides after the options

The trial's configuration is retrained with K seeds (the trial's `trainer.seed`, + 1, ...),
each a run nested under the sweep's parent run, and tested once; the test metrics are
reported as mean and std beside the trial's own validation value (the maximum of a
search, hence optimistic). One model becomes one new version of a registered model, with
the alias `champion` moved to it: the seed best on validation, or with `--train-on-val`
(no held-out validation left) the first seed. Bad input (an unknown study, trial or run,
a trial that did not complete, an invalid name) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from experiment.errors import ExperimentError
from experiment.serving import registry
from experiment.serving.compare import DEFAULT_STORE
from experiment.serving.swept_trial import PromoteError, SweptTrial
from experiment.sweep.context import Standalone, active

log = logging.getLogger("experiment.serving.promote")


@dataclass
class Retraining(Standalone):
    """The context of one retrained seed: nested under the sweep's parent run, tagged
    with the trial it retrains; it keeps the run's id."""

    parent_run_id: str | None = None
    trial_tags: dict[str, str] = field(default_factory=dict)
    name: str = ""
    run_id: str | None = None

    @property
    def tags(self) -> dict[str, str]:
        return self.trial_tags

    def run_name(self, base: str) -> str:
        return self.name

    def record_run(self, run_id: str | None, checkpoint_dir: str) -> None:
        self.run_id = run_id


@dataclass
class SeedResult:
    seed: int
    run_id: str
    metrics: dict[str, float]  # the run's final metrics (best/value, test/*, ...)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="experiment-promote",
        description="Retrain a sweep's trial over seeds and register it as the champion.",
    )
    parser.add_argument("--study", help="the study's name (with --storage)")
    parser.add_argument("--storage", help="the study's Optuna storage URL")
    parser.add_argument("--parent-run", help="the sweep's MLflow parent run id")
    parser.add_argument("--trial", type=int, help="the trial's number (default: the best)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds to retrain (default 3)")
    parser.add_argument(
        "--train-on-val",
        action="store_true",
        help="train on train + val, for the epochs the trial reached its best at",
    )
    parser.add_argument("--name", help="registered model name (default: the experiment's)")
    parser.add_argument("--tracking-uri", default=DEFAULT_STORE)
    parser.add_argument("--config-dir", help="a folder of your own option files, as for training")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.epochs=40")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1 (got {args.seeds})")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides are key=value (got {bad[0]!r})")
    return args


def promote(args: argparse.Namespace) -> str:
    """Retrain, report and register (see the module's doc); the report as text."""
    import mlflow

    from experiment.serving import swept_trial
    from experiment.tracking.tracker import absolute_uri

    uri = absolute_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise PromoteError(f"No MLflow store at {uri}: give --tracking-uri.")
    if args.name is not None:
        registry.check_name(args.name)  # before any training
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    sweep = swept_trial.find_sweep(
        client, study=args.study, storage=args.storage, parent_run=args.parent_run
    )
    study = swept_trial.open_study(sweep.study_name, sweep.storage)
    trial = swept_trial.choose_trial(study, args.trial)
    swept = swept_trial.describe_trial(client, sweep, trial)
    if swept.folds and not args.train_on_val:  # every sample validated once: none held out
        log.info(
            "Trial %s was cross-validated over %s folds: retrained on train + val for %s "
            "epochs (its folds' mean best epoch).",
            swept.number,
            swept.folds,
            swept.best_epochs,
        )
        args.train_on_val = True
    experiment_name = client.get_experiment(sweep.experiment_id).name
    name = registry.check_name(args.name or experiment_name)
    base = recompose(swept, [], args.config_dir)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    folder = Path("outputs", "promote", f"{sweep.study_name}-trial{swept.number}-{stamp}")
    fixed = promote_overrides(swept, uri, experiment_name, args.train_on_val)
    results = []
    for i in range(args.seeds):
        seed = int(base.trainer.seed) + i
        log.info("Retraining trial %s with seed %s (%s/%s)", swept.number, seed, i + 1, args.seeds)
        overrides = [
            *fixed,
            f"trainer.seed={seed}",
            f"trainer.checkpoint_dir={(folder / f'seed{seed}' / 'checkpoints').resolve()}",
            *args.overrides,
        ]
        results.append(retrain(swept, overrides, args.config_dir, seed))
    chosen = choose(results, base, args.train_on_val)
    report = report_text(swept, base, results, chosen, args)
    version = registry.register(
        client, name, chosen.run_id, version_tags(swept, chosen), description=report
    )
    champion = f"models:/{name}@{registry.ALIAS}"
    return f"{report}\nRegistered {name} version {version.version} as {champion}."


def recompose(swept: SweptTrial, extra: list[str], config_dir: str | None):
    """The trial's configuration composed again from its overrides (+ `extra`), checked
    against the config.yaml its run logged: a promote trains what the trial trained."""
    import yaml

    from experiment.config.project import compose
    from experiment.config.run_config import RunConfig, fingerprint, flatten

    checkpoints = "trainer.checkpoint_dir=outputs/promote/checkpoints"  # replaced per seed
    cfg = compose(dedupe([*swept.overrides, checkpoints, *extra]), config_dir=config_dir)
    if extra:
        return cfg
    logged = yaml.safe_load(swept.config_yaml)
    if swept.folds:  # a fold's run: the configuration is the same, retrained on all folds
        logged["dataset"].update(folds=None, fold=None)
    now = RunConfig.enter(cfg).resolved
    if fingerprint(now) != fingerprint(logged):
        before, after = flatten(logged), flatten(now)
        keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        key = next((k for k in keys if not k.startswith("trainer.checkpoint_dir")), "?")
        raise PromoteError(
            f"Trial {swept.number}'s configuration does not compose the same here ({key}: "
            f"{before.get(key)} in its run, {after.get(key)} here): run from the folder the "
            "sweep ran in, with the same --config-dir."
        )
    return cfg


def dedupe(overrides: list[str]) -> list[str]:
    """Overrides with each key once, the last value winning (Hydra refuses a key twice)."""
    last = {o.split("=", 1)[0].lstrip("+~"): o for o in overrides}
    return list(last.values())


def promote_overrides(swept: SweptTrial, uri: str, experiment: str, on_val: bool) -> list[str]:
    """What every retrained seed sets: tracked to the sweep's store and experiment, the
    model logged as a portable exported graph, and with --train-on-val the data and
    epochs of that."""
    fixed = [
        "tracking.enabled=true",
        f"tracking.uri={uri}",
        f"tracking.experiment_name={experiment}",
        "tracking.log_model=true",
        "tracking.model_format=pt2",
        "trainer.resume=null",
    ]
    if on_val:  # no held-out validation left to pick an epoch or stop early by
        fixed += [
            "dataset.train_on_val=true",
            f"trainer.epochs={swept.best_epochs}",
            "regularization.early_stopping.patience=null",
        ]
    return fixed


def retrain(swept: SweptTrial, overrides: list[str], config_dir, seed: int) -> SeedResult:
    """One seed's run, nested under the sweep's parent run; its final metrics."""
    import mlflow

    from experiment.training.run import run

    cfg = recompose(swept, overrides, config_dir)
    context = Retraining(
        parent_run_id=swept.sweep.parent_run_id,
        trial_tags={
            "optuna.study_name": swept.sweep.study_name,
            "promote.trial": str(swept.number),
            "promote.seed": str(seed),
        },
        name=f"promote-trial{swept.number}-seed{seed}",
    )
    with active(context):
        run(cfg)
    metrics = mlflow.MlflowClient().get_run(context.run_id).data.metrics
    return SeedResult(seed, context.run_id, metrics)


def choose(results: list[SeedResult], base, on_val: bool) -> SeedResult:
    """The registered seed: the best on validation; with val trained on, the first."""
    if on_val:
        return results[0]
    from experiment.config.run_config import RunConfig

    sign = -1.0 if RunConfig.enter(base).monitor.maximize else 1.0
    return min(results, key=lambda r: sign * r.metrics["best/value"])


def spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def report_text(swept: SweptTrial, base, results, chosen: SeedResult, args) -> str:
    """The trial's validation value beside the retrained seeds' test metrics."""
    metric = base.optimized_metric if isinstance(base.optimized_metric, str) else "value"
    value = swept.value if not isinstance(swept.value, list) else swept.value[0]
    how = f"train + val, {swept.best_epochs} epochs" if args.train_on_val else "train split alone"
    lines = [
        f"Trial {swept.number} of study '{swept.sweep.study_name}': {metric} {value:.4f} "
        f"in the sweep. Retrained with {len(results)} seed(s) ({how}):",
    ]
    tests = sorted({k for r in results for k in r.metrics if k.startswith("test/")})
    for name in tests:
        mean, std = spread([r.metrics[name] for r in results if name in r.metrics])
        lines.append(f"  {name}: mean {mean:.4f}, std {std:.4f}")
    for r in results:
        shown = f"{metric} (best) {r.metrics['best/value']:.4f}  " + " ".join(
            f"{k} {r.metrics[k]:.4f}" for k in tests if k in r.metrics
        )
        mark = " <- registered" if r is chosen else ""
        lines.append(f"  seed {r.seed}: run {r.run_id}  {shown}{mark}")
    return "\n".join(lines)


def version_tags(swept: SweptTrial, chosen: SeedResult) -> dict[str, str]:
    """Where the registered version comes from: study, trial, seed, its run's config
    fingerprint and the code's commit."""
    import mlflow
    import yaml

    from experiment.config.run_config import fingerprint
    from experiment.tracking.run_record import git_commit

    config = mlflow.artifacts.load_text(f"runs:/{chosen.run_id}/config.yaml")
    resolved = yaml.safe_load(config)
    return {
        "study": swept.sweep.study_name,
        "trial": str(swept.number),
        "seed": str(chosen.seed),
        "config_fingerprint": fingerprint(resolved),
        "git_commit": git_commit() or "none",
        "train_on_val": str(resolved["dataset"]["train_on_val"]).lower(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from experiment.config.project import importable_from_here
    from experiment.system.console import split_streams

    split_streams()
    importable_from_here()
    try:
        print(promote(args))
    except ExperimentError as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("Stopped: nothing was registered; the runs so far are KILLED.", file=sys.stderr)
        return 130
    return 0


def cli() -> None:
    from experiment.system.process_exit import run_then_exit

    run_then_exit(lambda: sys.exit(main()))


if __name__ == "__main__":
    cli()
