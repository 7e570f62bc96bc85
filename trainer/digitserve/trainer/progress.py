"""Training progress: a rich progress bar on a terminal, plain log lines anywhere else.

Plain mode writes one complete line per update (no carriage returns), at most one every
``interval`` seconds plus one at the end of each epoch, so that Kubernetes logs stay readable.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta
from typing import Any

import keras

logger = logging.getLogger(__name__)


def resolve_mode(mode: str) -> str:
    """'auto' becomes 'rich' when stdout is a terminal, else 'plain'."""
    if mode == "auto":
        return "rich" if sys.stdout.isatty() else "plain"
    return mode


def _format_eta(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def _format_metrics(logs: dict[str, Any] | None) -> str:
    if not logs:
        return ""
    keys = ("loss", "accuracy", "val_loss", "val_accuracy")
    return " ".join(f"{key} {float(logs[key]):.4f}" for key in keys if key in logs)


class TrainingProgress(keras.callbacks.Callback):
    """A Keras callback that reports epoch, step, loss/accuracy and the time left."""

    def __init__(self, mode: str, *, epochs: int, steps_per_epoch: int, interval: float = 10.0):
        super().__init__()
        self.mode = resolve_mode(mode)
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.interval = interval
        self._epoch = 0
        self._start = 0.0
        self._last_line = 0.0
        self._progress: Any = None
        self._task: Any = None

    @property
    def _total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def _eta(self, done: int) -> float:
        elapsed = time.monotonic() - self._start
        return elapsed / max(done, 1) * (self._total_steps - done)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._start = self._last_line = time.monotonic()
        if self.mode == "rich":
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[metrics]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task(
                self._description(), total=self._total_steps, metrics=""
            )

    def _description(self) -> str:
        return f"epoch {self._epoch + 1}/{self.epochs}"

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        if self._progress is not None:
            self._progress.update(self._task, description=self._description())

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        done = self._epoch * self.steps_per_epoch + batch + 1
        if self._progress is not None:
            self._progress.update(self._task, completed=done, metrics=_format_metrics(logs))
        elif self.mode == "plain":
            now = time.monotonic()
            if now - self._last_line >= self.interval and batch + 1 < self.steps_per_epoch:
                self._last_line = now
                logger.info(
                    "epoch %d/%d step %d/%d %s eta %s",
                    self._epoch + 1,
                    self.epochs,
                    batch + 1,
                    self.steps_per_epoch,
                    _format_metrics(logs),
                    _format_eta(self._eta(done)),
                )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        done = (epoch + 1) * self.steps_per_epoch
        if self._progress is not None:
            self._progress.console.print(f"epoch {epoch + 1}/{self.epochs} {_format_metrics(logs)}")
        elif self.mode == "plain":
            self._last_line = time.monotonic()
            logger.info(
                "epoch %d/%d done %s eta %s",
                epoch + 1,
                self.epochs,
                _format_metrics(logs),
                _format_eta(self._eta(done)),
            )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
