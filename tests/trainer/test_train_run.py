"""A small end-to-end run: the published version, its metadata and report, repeatability."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from digitserve.server import repository
from digitserve.trainer.report import REPORT_FILES
from digitserve.trainer.settings import TrainSettings
from digitserve.trainer.train import REPORT_DIR, TrainResult, run

SettingsFactory = Callable[..., TrainSettings]


def test_publishes_a_version_that_verifies(published: TrainResult) -> None:
    assert published.version == 1
    assert published.version_dir.name == "1"
    manifest = repository.verify_version(published.version_dir)
    manifest.check_signature()
    assert manifest.model == "mnist"
    assert "saved_model.pb" in manifest.files
    assert repository.METADATA_FILE in manifest.files
    assert not [p for p in published.version_dir.parent.iterdir() if p.name.startswith(".")]


def test_metadata_file_and_manifest_agree(published: TrainResult) -> None:
    on_disk = json.loads((published.version_dir / repository.METADATA_FILE).read_text())
    manifest = repository.read_manifest(published.version_dir)
    assert manifest.metadata == on_disk == published.metadata
    assert on_disk["architecture"] == "dense128"
    assert on_disk["test_accuracy"] == published.test_accuracy
    assert 0.5 < on_disk["test_accuracy"] <= 1.0
    assert on_disk["test_loss"] == pytest.approx(published.test_loss)
    assert on_disk["trained_at"].endswith("+00:00")
    assert on_disk["training_parameters"]["seed"] == 7
    assert on_disk["training_parameters"]["profile"] == "full"
    assert on_disk["training_parameters"]["train_examples"] == 1900
    assert on_disk["training_parameters"]["validation_examples"] == 100
    assert set(on_disk["data_checksums"]) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }
    assert set(on_disk["library_versions"]) == {"python", "tensorflow", "keras", "numpy"}
    assert on_disk["code_version"]["package_version"]
    assert len(on_disk["history"]) == 1
    assert set(on_disk["history"][0]) >= {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_report_is_written_and_covered_by_the_manifest(published: TrainResult) -> None:
    manifest = repository.read_manifest(published.version_dir)
    for name in REPORT_FILES:
        path = published.version_dir / REPORT_DIR / name
        assert path.stat().st_size > 0, name
        assert f"{REPORT_DIR}/{name}" in manifest.files
    metrics = json.loads((published.version_dir / REPORT_DIR / "metrics.json").read_text())
    assert metrics["accuracy"] == published.test_accuracy
    assert metrics["examples"] == 10000
    assert sum(map(sum, metrics["confusion_matrix"])) == 10000
    assert [row["digit"] for row in metrics["per_class"]] == list(range(10))
    page = (published.version_dir / REPORT_DIR / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # history, confusion, samples, mistakes


def test_same_seed_same_metrics(make_settings: SettingsFactory, tmp_path: Path) -> None:
    # The CNN with augmentation, batch norm and dropout: every source of randomness.
    small_cnn = {"architecture": "cnn", "augment": True, "train_limit": 1000, "report": False}
    first = run(make_settings(tmp_path / "first", seed=7, **small_cnn))
    again = run(make_settings(tmp_path / "again", seed=7, **small_cnn))
    assert again.test_accuracy == first.test_accuracy
    assert again.test_loss == first.test_loss
    assert again.metadata["history"] == first.metadata["history"]

    other = run(make_settings(tmp_path / "other", seed=8, **small_cnn))
    assert other.metadata["history"] != first.metadata["history"]
    assert other.test_loss != first.test_loss


def test_next_run_gets_the_next_version(
    published: TrainResult, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    first = run(make_settings(repo, report=False, train_limit=500))
    second = run(make_settings(repo, report=False, train_limit=500))
    assert (first.version, second.version) == (1, 2)
    assert repository.list_versions(repo, "mnist") == [1, 2]
