"""Which console stream a log line goes to: progress and tables to stdout, warnings and
errors to stderr, as a command-line tool's are.

Hydra's logging configs (its default and most apps') send every level to stdout. Rather
than ask every app for a logging config of ours, the console handlers that Hydra set up
are split after the fact: wherever a handler writes to stdout, it keeps the lines below
WARNING and a twin on stderr takes the rest, with the same format. Log files are left
as they are.
"""

from __future__ import annotations

import logging
import sys

_TWIN = "_experiment_stderr_twin"  # marks the stderr handler added for a stdout one


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def split_streams(logger: logging.Logger | None = None) -> None:
    """Split `logger`'s (default: the root logger's) stdout handlers; idempotent, and
    safe to call again after Hydra configured logging anew (each job does)."""
    logger = logger or logging.getLogger()
    handlers = list(logger.handlers)
    if any(getattr(h, _TWIN, False) for h in handlers):
        return
    for handler in handlers:
        if not _writes_to_stdout(handler):
            continue
        handler.addFilter(_BelowWarning())
        twin = logging.StreamHandler(sys.stderr)
        twin.setLevel(max(logging.WARNING, handler.level))
        twin.setFormatter(handler.formatter)
        setattr(twin, _TWIN, True)
        logger.addHandler(twin)


def _writes_to_stdout(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler and getattr(handler, "stream", None) in (
        sys.stdout,
        sys.__stdout__,
    )
