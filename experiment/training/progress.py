"""What a run shows while it trains: a progress bar on a terminal, one plain line per
epoch anywhere else (CI logs, files), nothing inside parallel sweep workers."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("experiment")


def epoch_line(epoch: int, epochs: int, m: dict[str, float], metric: str = "acc") -> str:
    """One epoch: loss and the task's `metric` (acc, r2, ...) of train and validation."""
    shown = "  ".join(
        f"{key} {m[key]:.4f}"
        for key in ("train/loss", f"train/{metric}", "val/loss", f"val/{metric}")
        if key in m
    )
    return f"epoch {epoch + 1}/{epochs}  {shown}  lr {m['lr']:.2e}  {m['epoch_time_s']:.2f}s"


class EpochProgress:
    """An epoch callback, closed when the run ends. `mode`: 'bar' (tqdm), 'lines' (log
    lines) or 'quiet'; 'auto' picks the bar when stdout is a terminal, lines otherwise."""

    def __init__(
        self,
        epochs: int,
        monitor: str,
        mode: str = "auto",
        first_epoch: int = 0,
        metric: str = "acc",
    ):
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        self.epochs, self.monitor, self.mode, self.metric = epochs, monitor, mode, metric
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, initial=first_epoch, unit="epoch", dynamic_ncols=True)

    def __call__(self, state) -> None:
        """An epoch callback: `state` is the loop's FitState after the epoch."""
        epoch, metrics = state.epoch, state.metrics
        if self.bar is not None:
            self.bar.set_postfix(
                {
                    "train/loss": f"{metrics['train/loss']:.4f}",
                    self.monitor: f"{metrics[self.monitor]:.4f}",
                },
                refresh=False,
            )
            self.bar.update(1)
        elif self.mode == "lines":
            log.info(epoch_line(epoch, self.epochs, metrics, self.metric))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
