"""``digitserve-train``: settings from flags and environment, and the report command."""

from __future__ import annotations

from pathlib import Path

import pytest

from digitserve.trainer.cli import EXIT_USAGE, main
from digitserve.trainer.report import REPORT_FILES
from digitserve.trainer.settings import TrainSettings
from digitserve.trainer.train import TrainResult


def test_flags_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic_settings import CliApp

    monkeypatch.setenv("DIGITSERVE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DIGITSERVE_EPOCHS", "4")
    settings = CliApp.run(
        TrainSettings,
        cli_args=[
            "--model-repo",
            "r",
            "--architecture",
            "mlp",
            "--profile",
            "quick",
            "--epochs",
            "3",
        ],
    )
    assert settings.data_dir == tmp_path
    assert settings.model_repo == Path("r")
    assert (settings.architecture, settings.profile, settings.epochs) == ("mlp", "quick", 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--architecture", "resnet"], "unknown architecture 'resnet': choose one of cnn"),
        (["--epochs", "0"], "--epochs: Input should be greater than or equal to 1"),
        (["--validation-split", "0.7"], "--validation-split: Input should be less than 0.5"),
        (["--model-name", "../x"], "invalid model name '../x'"),
    ],
)
def test_invalid_settings_are_refused_up_front(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_report_command_for_a_published_version(
    published: TrainResult, mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    repo = published.version_dir.parent.parent
    code = main(
        ["report", "--data-dir", str(mnist_dir), "--model-repo", str(repo),
         "--version", str(published.version), "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    assert str(out / "index.html") in capsys.readouterr().out
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    # Same model, same test set: the same figures as at training time.
    assert (out / "metrics.json").read_text() == (
        published.version_dir / "report" / "metrics.json"
    ).read_text()


def test_report_command_for_a_missing_version(published: TrainResult, tmp_path: Path) -> None:
    repo = published.version_dir.parent.parent
    assert main(["report", "--model-repo", str(repo), "--version", "99"]) == 1
