"""The digitserve command line, in process: settings, usage errors and failure output.

Commands against a real server are tested end to end elsewhere; here the
server is absent (a refused port), which is exactly when the CLI must print a
one-line error and a distinct exit status instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from digitserve.client.cli import CliSettings, build_parser, main


def settings(argv: list[str], environ: dict[str, str] | None = None) -> CliSettings:
    return CliSettings.from_args(build_parser().parse_args(argv), environ or {})


def test_target_defaults_to_localhost() -> None:
    assert settings(["health"]) == CliSettings(target="localhost:8500", timeout=10.0)


def test_environment_gives_target_and_timeout() -> None:
    env = {"DIGITSERVE_TARGET": "dns:///digitserve:8500", "DIGITSERVE_TIMEOUT": "2.5"}
    assert settings(["status"], env) == CliSettings("dns:///digitserve:8500", 2.5)


@pytest.mark.parametrize(
    "argv",
    [
        ["--target", "10.0.0.1:1", "--timeout", "3", "health"],
        ["health", "--target", "10.0.0.1:1", "--timeout", "3"],
    ],
    ids=["before-command", "after-command"],
)
def test_flags_win_over_environment_before_or_after_the_command(argv: list[str]) -> None:
    env = {"DIGITSERVE_TARGET": "elsewhere:1", "DIGITSERVE_TIMEOUT": "9"}
    assert settings(argv, env) == CliSettings("10.0.0.1:1", 3.0)


def test_comma_separated_addresses_are_a_list_of_replicas() -> None:
    replicas = settings(["--target", "127.0.0.1:8500,127.0.0.1:8501", "health"])
    assert replicas.targets() == ["127.0.0.1:8500", "127.0.0.1:8501"]
    uri = settings(["--target", "ipv4:127.0.0.1:8500,127.0.0.1:8501", "health"])
    assert uri.targets() == "ipv4:127.0.0.1:8500,127.0.0.1:8501"


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--timeout", "0", "health"], {}, "timeout"),
        (["health"], {"DIGITSERVE_TIMEOUT": "soon"}, "timeout"),
        (["--target", "a:1,b:2", "health"], {}, "dns:///"),
    ],
)
def test_bad_settings_exit_2_with_a_message(
    argv: list[str],
    environ: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["classify"],
        ["classify", "--version", "0", "x.png"],
        ["classify", "--version", "1", "--label", "stable", "x.png"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_help_exits_0_and_documents_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "exit status" in out
    assert "34 UNAVAILABLE" in out


@pytest.mark.parametrize("command", ["health", "status", "status --json"])
def test_unreachable_server_prints_code_and_details_and_exits_20_plus_code(
    command: str, refused_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", refused_address, *command.split()]) == 20 + 14
    captured = capsys.readouterr()
    assert captured.err.startswith("error: UNAVAILABLE: ")
    assert len(captured.err.strip().splitlines()) == 1
    assert captured.out == ""


def test_classify_unreachable_server_exits_with_the_call_status(
    tmp_path: Path, refused_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "seven.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    assert main(["--target", refused_address, "classify", str(image)]) == 34
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_unreadable_files_are_reported_each_and_exit_3(
    tmp_path: Path, refused_address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    missing = tmp_path / "missing.png"
    code = main(["--target", refused_address, "classify", "--json", str(text), str(missing)])
    assert code == 3
    captured = capsys.readouterr()
    assert f"error: {text}: " in captured.err
    assert f"error: {missing}: cannot read" in captured.err
    assert "Traceback" not in captured.err
    assert '"INPUT_ERROR"' in captured.out
