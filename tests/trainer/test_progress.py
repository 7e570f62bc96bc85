"""Plain progress output: one complete log line per update, for non-terminal logs."""

from __future__ import annotations

import logging

import pytest

from digitserve.trainer.progress import TrainingProgress


def test_plain_lines_report_epoch_step_metrics_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    progress = TrainingProgress("plain", epochs=2, steps_per_epoch=3, interval=0)
    caplog.set_level(logging.INFO, logger="digitserve.trainer.progress")
    progress.on_train_begin()
    for epoch in range(2):
        progress.on_epoch_begin(epoch)
        for step in range(3):
            progress.on_train_batch_end(step, {"loss": 0.5, "accuracy": 0.875})
        progress.on_epoch_end(epoch, {"loss": 0.5, "accuracy": 0.875, "val_loss": 0.25})
    progress.on_train_end()
    lines = [record.getMessage() for record in caplog.records]
    # Steps 1 and 2 of each epoch, then the epoch summary (the last step is the summary).
    assert len(lines) == 6
    assert lines[0].startswith("epoch 1/2 step 1/3 loss 0.5000 accuracy 0.8750 eta ")
    assert lines[2].startswith("epoch 1/2 done loss 0.5000 accuracy 0.8750 val_loss 0.2500 eta ")
    assert lines[-1].endswith("eta 0:00:00")
    assert not any("\r" in line or "\n" in line for line in lines)


def test_plain_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    progress = TrainingProgress("plain", epochs=1, steps_per_epoch=100, interval=3600)
    caplog.set_level(logging.INFO, logger="digitserve.trainer.progress")
    progress.on_train_begin()
    progress.on_epoch_begin(0)
    for step in range(100):
        progress.on_train_batch_end(step, {"loss": 1.0})
    progress.on_epoch_end(0, {"loss": 1.0})
    assert [r.getMessage().split(" eta")[0] for r in caplog.records] == [
        "epoch 1/1 done loss 1.0000"
    ]
