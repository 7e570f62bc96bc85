"""Fixtures for the trainer tests: the real MNIST folder, settings, and one published version.

MNIST is read through ``DIGITSERVE_DATA_DIR`` (CI sets it), else from the shared data set
beside the checkout. Training runs use small subsets and dense models: they test the
pipeline, not the accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from digitserve.trainer.settings import TrainSettings
from digitserve.trainer.train import TrainResult, run

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MNIST = REPO_ROOT.parent / "shared" / "datasets" / "mnist"

# Small enough to train in a few seconds on two cores.
SMALL_RUN: dict[str, Any] = {
    "architecture": "dense128",
    "epochs": 1,
    "train_limit": 2000,
    "min_accuracy": 0.0,
    "progress": "plain",
}


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path = Path(os.environ.get("DIGITSERVE_DATA_DIR") or DEFAULT_MNIST)
    assert path.is_dir(), f"MNIST not found at {path}: set DIGITSERVE_DATA_DIR"
    return path


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
