"""User-facing errors: problems a user can fix, reported as one clear message."""


class ExperimentError(Exception):
    """Base for errors caused by input the user controls (config, data, environment).

    The CLI prints these as a single line without a traceback and exits non-zero;
    anything else is a bug and keeps its traceback.
    """

    exit_code = 2


class ConfigError(ExperimentError):
    """The composed config cannot be run as it is."""


class ConfigValueError(ConfigError):
    """A config value is outside the range the run can use."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"Invalid value for '{key}': {value!r}. Allowed: {allowed}.")


class DataError(ExperimentError):
    """A dataset is missing, empty or unreadable."""


class EnvironmentFailure(ExperimentError):
    """The machine or a service failed, not the configuration: a full disk, a store that
    does not answer. What was trained is kept; the same command continues once it is
    fixed. A sweep counts no trial this ended: it keeps the trial for a retry and stops."""


class TrackingError(EnvironmentFailure):
    """The MLflow tracking store cannot be reached or written."""


class NonFiniteLossError(ExperimentError):
    """Training diverged: the loss became NaN or infinite."""

    exit_code = 3


class SweepError(ExperimentError):
    """The sweep's own settings are wrong, or every trial it ran failed."""


class SearchSpaceError(SweepError):
    """A search-space entry that cannot become an Optuna distribution."""


class CheckpointError(ExperimentError):
    """A checkpoint file that is unreadable, truncated, foreign or unsafe to load."""

    def __init__(self, path, why: str):
        self.path = path
        super().__init__(
            f"Cannot use checkpoint {path}: {why}. Expected a last.pt or best.pt written by "
            "a run of this project."
        )


class WriteError(EnvironmentFailure):
    """A file the run must keep (a checkpoint, an artifact) cannot be written: the disk is
    full, or the folder cannot be written. What was written before is whole."""


class DistributedError(ExperimentError):
    """The ranks of a distributed run cannot work together: a rank was lost, a rendezvous
    failed, or the ranks disagree on what to train."""
