"""Storage outages waited out: the study's database, and the MLflow store of the sweep's
own bookkeeping.

A shared study lives in a database; a sweep on several machines must not die on the first
blip of it (a restart, a failover, a SQLite "database is locked" storm). Every storage
call of a sweep's processes (ask, tell, report, heartbeat, attributes, the study lock)
goes through `Patience.call`: a connection error is retried with backoff for up to
`hydra.sweeper.storage_patience` seconds, with one warning line when the storage stops
answering and one when it is back ("storage back after 8.2 s"). Past the patience, the
sweep stops with one line (StorageOutage); the same command continues the study.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import optuna

from experiment.errors import EnvironmentFailure
from experiment.sweep import optuna_internals as internals
from experiment.system.secrets import redact

log = logging.getLogger(__name__)
DEFAULT_PATIENCE_S = 120.0
STUDY, TRACKING = "study storage", "MLflow tracking store"


class StorageOutage(EnvironmentFailure):
    """The study storage did not answer within the patience."""


def transient(err: BaseException) -> bool:
    """Whether `err` (or what caused it: Optuna and MLflow wrap SQLAlchemy's errors) is a
    lost or refused connection, or a busy SQLite file: worth a retry, not a bug."""
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

    kinds = (OperationalError, InterfaceError, DisconnectionError, *_http_connection_errors())
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, kinds):
            return True
        err = err.__cause__ or err.__context__
    return False


def _http_connection_errors() -> tuple[type, ...]:
    """An MLflow server that does not answer (after MLflow's own retries)."""
    try:
        from requests.exceptions import ConnectionError, Timeout
    except ImportError:  # a sweep of an app without MLflow
        return ()
    return ConnectionError, Timeout


class Patience:
    """Retries of one storage's calls, and the lines that tell of an outage."""

    def __init__(self, url: str | None, seconds: float = DEFAULT_PATIENCE_S, what=STUDY):
        self.where, self.seconds, self.what = redact(url or "in memory"), float(seconds), what
        self._lock = threading.Lock()  # the heartbeat thread calls too
        self._down_since: float | None = None

    def __getstate__(self) -> dict:  # a storage handed to another process: no lock
        return {"where": self.where, "seconds": self.seconds, "what": self.what}

    def __setstate__(self, state: dict) -> None:
        self.__init__(None, state["seconds"], state["what"])
        self.where = state["where"]

    def call(self, function, *args, **kwargs):
        first_failure, delay = None, 0.25
        while True:
            try:
                result = function(*args, **kwargs)
            except Exception as err:
                if not transient(err):
                    raise
                now = time.monotonic()
                first_failure = first_failure or now
                self._went_down(err, now)
                waited = now - first_failure
                if waited >= self.seconds:
                    raise StorageOutage(
                        f"The {self.what} {self.where} has not answered for {waited:.0f} s "
                        f"(hydra.sweeper.storage_patience={self.seconds:g}): the sweep "
                        "stops. Run the same command once it is back: it continues the study."
                    ) from None
                time.sleep(min(delay, self.seconds - waited))
                delay = min(delay * 2, 5.0)
                continue
            if first_failure is not None:
                self._came_back()
            return result

    def _went_down(self, err: BaseException, now: float) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = now
        reason = redact(str(err).strip().splitlines()[0]) if str(err).strip() else ""
        log.warning(
            "The %s %s does not answer (%s: %s); waiting up to %g s for it "
            "(hydra.sweeper.storage_patience).",
            self.what,
            self.where,
            type(err).__name__,
            reason,
            self.seconds,
        )

    def _came_back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning("The %s is back after %.1f s.", self.what, time.monotonic() - since)


class PatientClient:
    """An MlflowClient whose every call waits out an outage of its store (the sweep's own
    bookkeeping: the parent run, its summary and plots, the trial runs it closes)."""

    def __init__(self, client, patience: Patience):
        self._client, self._patience = client, patience

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return functools.partial(self._patience.call, attribute)


class PatientStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose every database call waits out an outage (`Patience`).
    Still an RDBStorage: Optuna puts its cache in front of it as it does for its own."""

    def __init__(self, url: str, *, patience: Patience, **kwargs):
        self.patience = patience
        super().__init__(url, **kwargs)


def _patient(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        return self.patience.call(method, self, *args, **kwargs)

    return call


# Every RDBStorage method that reads or writes the database (the heartbeat's included).
for _name in (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "record_heartbeat",
    *internals.PRIVATE_STORAGE_CALLS,
):
    setattr(PatientStorage, _name, _patient(getattr(optuna.storages.RDBStorage, _name)))
