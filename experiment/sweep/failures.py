"""`max_failure_rate`: the share of a study's counted finished trials that may fail."""

from pathlib import Path

from experiment.sweep import study as studies


def counted_finished(study) -> list:
    trials = study.get_trials(deepcopy=False, states=studies.FINISHED)
    return [t for t in trials if studies.is_counted(t)]


def failure_counts(study) -> tuple[int, int]:
    """(failed, finished) among the counted trials."""
    finished = counted_finished(study)
    return sum(t.state == studies.TrialState.FAIL for t in finished), len(finished)


def last_failed(study):
    """The counted failed trial that ended last (None if there is none)."""
    failed = [t for t in counted_finished(study) if t.state == studies.TrialState.FAIL]
    return max(
        failed,
        key=lambda t: (t.datetime_complete is not None, t.datetime_complete, t.number),
        default=None,
    )


class FailureRate:
    def __init__(self, max_rate: float):
        self.max_rate = max_rate

    def exceeded(self, study) -> bool:
        if self.max_rate >= 1.0:
            return False
        failed, finished = failure_counts(study)
        return finished > 0 and failed / finished > self.max_rate

    def message(self, study, sweep_dir: Path) -> str:
        failed, finished = failure_counts(study)
        last = last_failed(study)
        cause = ""
        if last is not None:
            error = last.system_attrs.get(studies.ERROR_ATTR) or last.system_attrs.get(
                studies.FAIL_REASON_ATTR, "no error recorded"
            )
            cause = f" The last failed trial, {last.number}: {error}."
        return (
            f"{failed} of {finished} finished trials failed ({failed / finished:.0%}), more "
            f"than hydra.sweeper.max_failure_rate={self.max_rate}: the sweep stopped."
            f"{cause} The trials' logs are under {sweep_dir}; the study and its MLflow runs "
            "are kept."
        )
