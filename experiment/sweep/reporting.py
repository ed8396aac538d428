"""What a sweep leaves behind: the MLflow parent run, the study plots, the results file,
and one console line per finished trial."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from experiment.sweep import optuna_internals as internals
from experiment.sweep.constraints import is_feasible
from experiment.sweep.patience import DEFAULT_PATIENCE_S, TRACKING, Patience, PatientClient
from experiment.sweep.protocol import PARENT_TAG, UNIT_VALUES_ATTRS
from experiment.sweep.repeats import STD_ATTR
from experiment.system import durable
from experiment.system.secrets import redact

log = logging.getLogger(__name__)
STUDY_UID_TAG = "optuna.study_uid"  # the parent run's study: its identity, not its name


class ParentRun:
    """The study's MLflow run; trials nest under it. Found again on resume by the study's
    name and identity (`study.identity`): a new study of an old name gets a parent of its
    own, never the old study's."""

    def __init__(
        self,
        tracking_cfg,
        study_name: str,
        storage: str | None,
        study_uid: str,
        legacy: bool = False,
        patience: float = DEFAULT_PATIENCE_S,
    ):
        """`legacy`: the study predates study identities; its parent run (one without the
        identity tag) is adopted. Every call to the store waits out an outage of up to
        `patience` seconds."""
        from experiment.tracking.tracker import (
            Tracker,  # MLflow and torch: only for apps that track
        )

        self.tracker = Tracker(
            tracking_cfg.uri, tracking_cfg.artifact_root, tracking_cfg.experiment_name
        )
        self.client = PatientClient(
            self.tracker.mlflow.MlflowClient(self.tracker.uri),
            Patience(self.tracker.uri, patience, TRACKING),
        )
        self.plots_wanted = bool(getattr(tracking_cfg, "log_plots", True))
        found = self.client.search_runs(
            [self.tracker.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = 'true' and "
            f"tags.`optuna.study_name` = '{study_name}'",
        )
        mine = [r for r in found if r.data.tags.get(STUDY_UID_TAG) == study_uid]
        if not mine and legacy:
            mine = [r for r in found if STUDY_UID_TAG not in r.data.tags][:1]
        if mine:
            self.run_id = mine[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, STUDY_UID_TAG, study_uid)
        else:
            run = self.client.create_run(
                self.tracker.experiment_id,
                run_name=f"sweep-{study_name}",
                tags={
                    PARENT_TAG: "true",
                    "optuna.study_name": study_name,
                    STUDY_UID_TAG: study_uid,
                    "optuna.storage": redact(storage or "in-memory"),
                },
            )
            self.run_id = run.info.run_id

    def prepare_plots(self) -> None:
        """Import what the study plots need, so the end of the sweep does not: the
        plotting modules (~0.6 s) and what the first importance evaluation loads (Optuna's
        importance package imports SciPy and scikit-learn: ~2 s), by evaluating it once on
        a study of three trials in memory."""
        if not self.plots_wanted:
            return
        _plotting()
        from optuna.distributions import FloatDistribution
        from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tiny = optuna.create_study()
            for value in (0.1, 0.5, 0.9):
                tiny.add_trial(
                    optuna.trial.create_trial(
                        params={"x": value},
                        distributions={"x": FloatDistribution(0, 1)},
                        value=value,
                    )
                )
            get_param_importances(tiny, evaluator=PedAnovaImportanceEvaluator())
        optuna.logging.set_verbosity(verbosity)

    def _log_plots(self, study: optuna.Study) -> None:
        if self.plots_wanted:
            with tempfile.TemporaryDirectory(prefix="optuna-plots-") as folder:
                for path in study_plots(study, Path(folder)):
                    self.client.log_artifact(self.run_id, str(path), "plots")

    def tag_trial_run(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def start_trial_run(self, trial, units) -> str:
        """The run of a trial whose seeds and folds (repeats.Units) are runs of their own,
        nested under it: its params and tags now, its mean and std at its end
        (`end_trial_run`)."""
        from mlflow.entities import Param

        tags = {
            "mlflow.parentRunId": self.run_id,
            "optuna.study_name": trial.study.study_name,
            "optuna.trial": str(trial.number),
            "optuna.repeats": str(units.repeats),
            "optuna.folds": str(units.folds),
        }
        run = self.client.create_run(
            self.tracker.experiment_id,
            run_name=f"trial{trial.number}-{units.label()}",
            tags=tags,
        )
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        self.client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def end_trial_run(self, run_id: str, trial, result) -> None:
        """A trial run's mean and std over its seeds (each objective's), state and end."""
        from mlflow.entities import Metric

        means, stds = result.value, trial.user_attrs.get(STD_ATTR)
        metrics = {}
        if means is not None and stds is not None:
            several = isinstance(means, list)
            for i, (mean, std) in enumerate(
                zip(means if several else [means], stds if several else [stds], strict=True)
            ):
                suffix = f"_{i}" if several else ""
                metrics |= {f"value_mean{suffix}": mean, f"value_std{suffix}": std}
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)
        self.client.set_tag(run_id, "optuna.state", result.state)
        status = "KILLED" if result.lost else "FAILED" if result.state == "FAIL" else "FINISHED"
        self.client.set_terminated(run_id, status)

    def close_orphans(self, study: optuna.Study) -> None:
        """Trial runs left RUNNING by a killed process: KILLED, not RUNNING forever.

        Any run of this sweep still RUNNING whose trial no longer is (a trial's run, or a
        seed's or fold's run nested under it): that also covers a process killed after
        starting its run but before recording the run's id in the study, and one killed
        between recovering a trial and closing its run."""
        running_trials = {
            str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        }
        experiments = [self.tracker.experiment_id]
        trial_runs = self.client.search_runs(
            experiments, f"tags.`mlflow.parentRunId` = '{self.run_id}'", max_results=5000
        )
        of_this_sweep = {self.run_id} | {r.info.run_id for r in trial_runs}
        running = self.client.search_runs(
            experiments, "attributes.status = 'RUNNING'", max_results=5000
        )
        for run in running:
            tags = run.data.tags
            if tags.get("mlflow.parentRunId") not in of_this_sweep:
                continue
            if tags.get("optuna.trial") not in running_trials:
                self.client.set_terminated(run.info.run_id, "KILLED")

    def finish(
        self,
        study: optuna.Study,
        summary: dict,
        results_file: Path | None,
        status: str,
        close: bool = True,
    ) -> None:
        """Record the summary and (with `tracking.log_plots`) the study plots; status
        FINISHED, FAILED (all trials failed) or KILLED.

        `close=False` leaves the run RUNNING for the other processes sharing the study.
        The status is written whatever fails before it (a full artifact store, say)."""
        try:
            self._record_summary(study, summary, results_file)
        except Exception as err:
            log.warning(
                "Could not record the sweep's summary in its MLflow run %s: %s: %s",
                self.run_id,
                type(err).__name__,
                redact(str(err)).splitlines()[0] if str(err) else "",
            )
        finally:
            if close or status == "KILLED":
                self.client.set_terminated(self.run_id, status)

    def _record_summary(self, study, summary: dict, results_file: Path | None) -> None:
        metrics = {f"trials_{state.lower()}": count for state, count in summary["counts"].items()}
        if summary.get("best_value") is not None:
            metrics["best_value"] = summary["best_value"]
        if summary.get("solutions") is not None:
            metrics["pareto_front_size"] = len(summary["solutions"])
            self.client.set_tag(
                self.run_id,
                "pareto.trials",
                ",".join(str(s["number"]) for s in summary["solutions"]),
            )
            self.client.log_text(self.run_id, pareto_table(summary["solutions"]), "pareto_front.md")
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value)
        for key, value in (summary.get("best_params") or {}).items():
            self.client.set_tag(self.run_id, f"best.{key}", str(value))
        if summary.get("best_trial") is not None:
            self.client.set_tag(self.run_id, "best.trial", str(summary["best_trial"]))
        if summary.get("stopped_by"):
            self.client.set_tag(self.run_id, "sweep.stopped_by", summary["stopped_by"])
        if results_file is not None and results_file.exists():
            self.client.log_artifact(self.run_id, str(results_file))
        self._log_plots(study)


# Margins (shares of the 10 x 6 in figure) of the study plots whose labels are fixed words.
FIXED_MARGINS = {
    "optimization_history": dict(left=0.08, right=0.97, bottom=0.1, top=0.93),
    "intermediate_values": dict(left=0.08, right=0.97, bottom=0.1, top=0.93),
}


def study_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """The Optuna plots as PNG files in `folder` (matplotlib: they show in the UI without
    a network)."""
    plt, plots = _plotting()
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if len(study.directions) > 1:  # one objective per axis; the front highlighted
        wanted = (
            {"pareto_front": (plots.plot_pareto_front, 1)} if len(study.directions) <= 3 else {}
        )
    else:
        wanted = {
            "optimization_history": (plots.plot_optimization_history, 1),
            "param_importances": (_importances, 2),
            "parallel_coordinate": (plots.plot_parallel_coordinate, 1),
            "intermediate_values": (plots.plot_intermediate_values, 1),
        }
    written = []
    for name, (plot, min_trials) in wanted.items():
        if len(complete) < min_trials:
            continue
        try:
            with warnings.catch_warnings():  # the matplotlib backend is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)  # e.g. equal importances
                axes = plot(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
            figure.set_size_inches(10, 6)
            if name in FIXED_MARGINS:  # short labels: no measuring pass (a third of the time)
                figure.subplots_adjust(**FIXED_MARGINS[name])
            else:  # parameter names as labels: laid out to fit them
                figure.tight_layout()
            figure.savefig(folder / f"{name}.png", dpi=100, pil_kwargs={"compress_level": 1})
            plt.close(figure)
            written.append(folder / f"{name}.png")
        except Exception as err:  # a plot that cannot be drawn must not fail the sweep
            log.warning("Could not draw %s: %s", name, err)
    return written


def _plotting():
    """pyplot on the Agg canvas, and Optuna's matplotlib plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    return plt, plots


def _importances(study: optuna.Study):
    """PED-ANOVA, as Optuna Dashboard: a second at most where fANOVA's forest takes ~2 s
    (most of it importing scikit-learn's ensembles) at the end of every sweep."""
    from optuna.importance import PedAnovaImportanceEvaluator

    _, plots = _plotting()
    return plots.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())


def summarize(study: optuna.Study, stopped=None) -> dict:
    """Trial counts and the best trial; for several objectives the Pareto front
    (`solutions`) instead of one best. With constraints, both hold feasible trials only
    (Optuna's own rule) and the infeasible complete trials are counted. `stopped`: the
    Stop that ended the sweep, if known."""
    counts = {state.name: 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state.name in counts:
            counts[trial.state.name] += 1
    summary = {"counts": counts, "best_value": None, "best_params": None, "best_trial": None}
    if any(t.constraints for t in trials):
        summary["infeasible"] = sum(
            t.state == TrialState.COMPLETE and not is_feasible(t) for t in trials
        )
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number) if counts["COMPLETE"] else []
        summary["solutions"] = [
            {"number": t.number, "params": t.params, "values": t.values} for t in front
        ]
    elif counts["COMPLETE"] and summary.get("infeasible", 0) < counts["COMPLETE"]:
        best = study.best_trial
        summary.update(best_value=best.value, best_params=best.params, best_trial=best.number)
        if STD_ATTR in best.user_attrs:  # the best mean over seeds, and its spread
            summary["best_value_std"] = best.user_attrs[STD_ATTR]
    seeded = [t for t in trials if t.state == TrialState.COMPLETE and STD_ATTR in t.user_attrs]
    if seeded:
        summary["seeds"] = [
            {
                "trial": t.number,
                "mean": t.values if len(t.values) > 1 else t.value,
                "std": t.user_attrs[STD_ATTR],
                "values": next(
                    (t.user_attrs[k] for k in UNIT_VALUES_ATTRS if k in t.user_attrs), None
                ),
            }
            for t in seeded
        ]
    if stopped is not None:
        summary.update(stopped_by=stopped.by, stop_reason=stopped.reason)
    return summary


def write_results(path: Path, study_name: str, summary: dict) -> None:
    """optimization_results.yaml, in the shape the official Optuna sweeper writes: best
    params and value, or for several objectives the Pareto front as `solutions`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {"name": "optuna", "study_name": study_name}
    if summary.get("solutions") is not None:
        results["solutions"] = [
            {"params": s["params"], "values": s["values"], "trial": s["number"]}
            for s in summary["solutions"]
        ]
    else:
        results.update(best_params=summary["best_params"], best_value=summary["best_value"])
    results["trials"] = summary["counts"]
    for key in ("best_value_std", "seeds", "infeasible", "stopped_by", "stop_reason"):
        if key in summary:
            results[key] = summary[key]
    durable.write_text(path, OmegaConf.to_yaml(OmegaConf.create(results)))


def pareto_table(solutions: list[dict]) -> str:
    """The Pareto front as a Markdown table: trial, objective values, params."""
    names = sorted({k for s in solutions for k in s["params"]})
    n_values = max((len(s["values"]) for s in solutions), default=0)
    header = ["trial", *(f"value {i}" for i in range(n_values)), *names]
    rows = [
        [
            str(s["number"]),
            *(f"{v:.6g}" for v in s["values"]),
            *(_short(s["params"].get(k, "")) for k in names),
        ]
        for s in solutions
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def pareto_ranks(study: optuna.Study) -> dict[int, int]:
    """Each complete trial's Pareto rank: 1 for the front, 2 for the front without it..."""
    remaining = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    ranks, rank = {}, 1
    while remaining:
        front = [
            t
            for t in remaining
            if not any(internals.dominates(o, t, study.directions) for o in remaining)
        ]
        ranks.update({t.number: rank for t in front})
        remaining = [t for t in remaining if t.number not in ranks]
        rank += 1
    return ranks


def trial_line(result, params: dict) -> str:
    value = "" if result.value is None else f" value={_values(result.value)}"
    shown = " ".join(f"{k}={_short(v)}" for k, v in params.items())
    error = f" ({result.error})" if result.error and result.state != "COMPLETE" else ""
    return f"trial {result.number} {result.state}{value} {result.seconds:.1f}s  {shown}{error}"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _values(value) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(f"{v:.4g}" for v in value) + "]"
    return f"{value:.4f}"


def summary_table(study: optuna.Study, limit: int = 20) -> str:
    """The study's trials as a table, best first (for several objectives: by Pareto rank),
    then the unfinished and failed ones."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    if not trials:
        return "(no trials)"
    several = len(study.directions) > 1
    ranks = pareto_ranks(study) if several else {}
    sign = -1.0 if study.directions[0].name == "MAXIMIZE" else 1.0
    constrained = any(t.constraints for t in trials)

    def order(t):
        infeasible = constrained and not is_feasible(t)
        if several:
            return (infeasible, t.number not in ranks, ranks.get(t.number, 0), t.number)
        value = sign * t.value if t.value is not None else 0.0
        return (t.value is None, infeasible, value, t.number)

    names = sorted({k for t in trials for k in t.params})
    seeded = any(STD_ATTR in t.user_attrs for t in trials)  # value: the mean over seeds
    std = ["std"] if seeded else []
    header = ["trial", "state", *(["rank"] if several else []), "value", *std, "seconds", *names]
    if constrained:
        header.insert(2, "feasible")
    rows = []
    for t in sorted(trials, key=order)[:limit]:
        seconds = t.duration.total_seconds() if t.duration else float("nan")
        value = "" if t.values is None else _values(t.values if several else t.value)
        rank = [str(ranks.get(t.number, ""))] if several else []
        params = [_short(t.params[k]) if k in t.params else "" for k in names]
        spread = [_values(t.user_attrs[STD_ATTR]) if STD_ATTR in t.user_attrs else ""]
        row = [str(t.number), t.state.name, *rank, value, *(spread if seeded else [])]
        row += [f"{seconds:.1f}", *params]
        if constrained:
            row.insert(
                2, "" if t.state != TrialState.COMPLETE else "yes" if is_feasible(t) else "no"
            )
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    more = len(trials) - len(rows)
    return "\n".join(lines + ([f"... and {more} more"] if more > 0 else []))


def best_line(summary: dict) -> str:
    if summary.get("solutions") is not None:
        return f"Pareto front: {len(summary['solutions'])} trials."
    if summary["best_value"] is None:
        return "Best: none yet."
    std = summary.get("best_value_std")
    spread = f" (std {std:.4f} over its runs)" if std is not None else ""
    return f"Best value {summary['best_value']:.4f}{spread} with {summary['best_params']}."
