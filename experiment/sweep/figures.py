"""The figures of trials that ran in worker processes, drawn by a process of their own.

A trial's learning curves and test figure take a worker ~0.15 s, in which it could
train its next trial. So a worker sends its runs' figures (pickled RunFigures) with its
trial's result, and one figure process, started with the workers, draws and logs them
into each trial's MLflow run. A process, not a thread of the sweep's: matplotlib holds
the interpreter's lock while it draws, and the sweep's thread must answer the workers
(tell, ask, compose) at once. Every trial's figures are logged before the sweep's own
plots are drawn (`drain`, when the workers stop); a sweep killed outright loses at most
the figures of the trials that had just ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue

log = logging.getLogger(__name__)

CHECK_PARENT_SECONDS = 2.0
DRAIN_SECONDS = 300.0  # the most the sweep's end waits for figures still to draw


def draw_figures(pending, parent_pid: int) -> None:
    """The figure process: draw and log each RunFigures until told to stop (None), or
    until the sweep's process is gone."""
    while True:
        try:
            figures = pending.get(timeout=CHECK_PARENT_SECONDS)
        except queue.Empty:
            if os.getppid() != parent_pid:  # the sweep was killed: nobody to draw for
                return
            continue
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if figures is None:
            return
        draw_one(figures)


def draw_one(figures: bytes) -> None:
    try:
        pickle.loads(figures).log()
    except Exception as err:  # a full disk, a store gone: the trial stands
        log.warning("A trial's figures were not logged: %s: %s", type(err).__name__, err)


class FigureWriter:
    def __init__(self, context):
        """`context`: the multiprocessing context the workers start with."""
        self.pending = context.Queue()
        self.warned = False
        self.process = context.Process(
            target=draw_figures, args=(self.pending, os.getpid()), name="trial-figures", daemon=True
        )
        self.process.start()

    def submit(self, pickled: list[bytes]) -> None:
        if not self.process.is_alive():  # killed (out of memory, say): drawn here instead
            if not self.warned:
                log.warning(
                    "The figure process ended (exit code %s); the sweep's process draws "
                    "the trials' figures from now on.",
                    self.process.exitcode,
                )
                self.warned = True
            for figures in pickled:
                draw_one(figures)
            return
        for figures in pickled:
            self.pending.put(figures)

    def drain(self) -> None:
        """Wait until every figure submitted is logged, then end the figure process."""
        if not self.process.is_alive():
            return
        with contextlib.suppress(OSError, ValueError):
            self.pending.put(None)
        self.process.join(timeout=DRAIN_SECONDS)
        if self.process.is_alive():
            log.warning("The trials' figures took over %.0f s to draw; stopped.", DRAIN_SECONDS)
            self.process.kill()
            self.process.join(timeout=5)
