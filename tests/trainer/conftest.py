"""Fixtures for the trainer tests: settings for small runs, and one published version.

MNIST comes from the shared ``mnist_dir`` fixture (``DIGITSERVE_DATA_DIR``, else the data
set beside the checkout). Training runs use small subsets and dense models: they test the
pipeline, not the accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from digitserve.trainer.settings import TrainSettings
from digitserve.trainer.train import TrainResult, run

# Small enough to train in a few seconds on two cores.
SMALL_RUN: dict[str, Any] = {
    "architecture": "dense128",
    "epochs": 1,
    "train_limit": 2000,
    "min_accuracy": 0.0,
    "progress": "plain",
}


SettingsFactory = Callable[..., TrainSettings]


@pytest.fixture(scope="session")
def make_settings(mnist_dir: Path) -> SettingsFactory:
    """Settings for a small run into ``repo``; keyword arguments override any field."""

    def make(repo: Path, **overrides: Any) -> TrainSettings:
        values = {**SMALL_RUN, "data_dir": mnist_dir, "model_repo": repo, **overrides}
        return TrainSettings(**values)

    return make


@pytest.fixture(scope="session")
def published(
    tmp_path_factory: pytest.TempPathFactory, make_settings: SettingsFactory
) -> TrainResult:
    """One small model trained and published (with its report) for the whole session."""
    repo = tmp_path_factory.mktemp("published-repo")
    return run(make_settings(repo, seed=7))
