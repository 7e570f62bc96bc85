"""The quality gate: a minimum accuracy, and no regression against the stable version."""

from __future__ import annotations

from pathlib import Path

import pytest

from digitserve.server import repository
from digitserve.trainer.cli import EXIT_GATE, main
from digitserve.trainer.gate import GateDecision, check_quality

MODEL = "mnist"


def publish_fake(repo: Path, accuracy: float) -> int:
    """A version with a dummy file: the gate reads only its verified manifest."""
    with repository.staging_dir(repo, MODEL) as staged:
        (staged / "saved_model.pb").write_bytes(b"not a model")
        return repository.publish(
            staged,
            repo,
            MODEL,
            inputs={repository.INPUT_NAME: repository.EXPECTED_INPUT},
            outputs={repository.OUTPUT_NAME: repository.EXPECTED_OUTPUT},
            metadata={"test_accuracy": accuracy},
        )


def gate(
    repo: Path, accuracy: float, min_accuracy: float = 0.98, max_regression: float = 0.002
) -> GateDecision:
    return check_quality(
        accuracy, repo=repo, model=MODEL, min_accuracy=min_accuracy, max_regression=max_regression
    )


def test_passes_without_a_stable_version(tmp_path: Path) -> None:
    publish_fake(tmp_path, 0.999)  # published but not labelled stable: no baseline
    decision = gate(tmp_path, 0.985)
    assert decision.passed
    assert decision.baseline_version is None


def test_refuses_below_min_accuracy(tmp_path: Path) -> None:
    decision = gate(tmp_path, 0.9799)
    assert not decision.passed
    assert "97.9900%" in decision.summary()
    assert "minimum accuracy 98.0000%" in decision.summary()


def test_refuses_a_regression_against_stable(tmp_path: Path) -> None:
    version = publish_fake(tmp_path, 0.9950)
    repository.write_labels(tmp_path, MODEL, {"stable": version})
    assert gate(tmp_path, 0.9930).passed  # exactly the allowed 0.2 points
    decision = gate(tmp_path, 0.9925)
    assert not decision.passed
    assert (decision.baseline_version, decision.baseline_accuracy) == (version, 0.9950)
    assert "regression vs stable version 1 (99.5000%): -0.2500%" in decision.summary()


def test_unverifiable_stable_version_fails_closed(tmp_path: Path) -> None:
    version = publish_fake(tmp_path, 0.99)
    repository.write_labels(tmp_path, MODEL, {"stable": version})
    (tmp_path / MODEL / str(version) / "saved_model.pb").write_bytes(b"tampered")
    decision = gate(tmp_path, 0.999)
    assert not decision.passed
    assert "checksum mismatch" in decision.summary()


def test_cli_refuses_to_publish_below_min_accuracy(
    mnist_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "--data-dir", str(mnist_dir),
            "--model-repo", str(tmp_path),
            "--architecture", "dense128",
            "--epochs", "1",
            "--train-limit", "1000",
            "--no-report",
            "--min-accuracy", "0.999",
        ]
    )  # fmt: skip
    assert code == EXIT_GATE
    assert repository.list_versions(tmp_path, MODEL) == []
    assert [p.name for p in (tmp_path / MODEL).iterdir()] == []  # no staging left behind
    assert "published" not in capsys.readouterr().out


def test_cli_refuses_to_publish_a_regression_against_stable(
    mnist_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stable = publish_fake(tmp_path, 0.999)
    repository.write_labels(tmp_path, MODEL, {"stable": stable})
    code = main(
        [
            "--data-dir", str(mnist_dir),
            "--model-repo", str(tmp_path),
            "--architecture", "dense128",
            "--epochs", "1",
            "--train-limit", "1000",
            "--no-report",
            "--min-accuracy", "0",
        ]
    )  # fmt: skip
    assert code == EXIT_GATE
    assert repository.list_versions(tmp_path, MODEL) == [stable]
    assert "regression vs stable version 1 (99.9000%)" in caplog.text
