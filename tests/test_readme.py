"""The README documents what the programs really accept."""

from __future__ import annotations

from digitserve.server.settings import ServerSettings

from .conftest import REPO_ROOT


def test_every_server_setting_is_in_the_readme_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [
        name
        for name in ServerSettings.model_fields
        if f"`DIGITSERVE_{name.upper()}`" not in readme
        or f"`--{name.replace('_', '-')}" not in readme
    ]
    assert missing == [], "add these settings to the README's table"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()
