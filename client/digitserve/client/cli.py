"""``digitserve``: classify image files, show model status, check health, from a shell.

    digitserve classify seven.png two.jpg [--json] [--model M] [--version N | --label L]
    digitserve status [--model M] [--json]
    digitserve health [--service S]

``--target`` (default ``$DIGITSERVE_TARGET``, else ``localhost:8500``) and
``--timeout`` (default ``$DIGITSERVE_TIMEOUT``, else 10 s) go before or after
the command. Failures print ``error: <CODE>: <details>`` on stderr, never a
traceback, and set the exit status (see ``EXIT_CODES_HELP``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import enum
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from digitserve.client.calls import DEFAULT_TIMEOUT, check_timeout
from digitserve.client.channel import channel_target
from digitserve.client.errors import DigitServeError
from digitserve.client.inputs import to_image
from digitserve.client.results import ItemResult
from digitserve.client.status import ModelStatus
from digitserve.client.sync_client import DigitClient
from digitserve.v1 import digitserve_pb2

__all__ = ["CliSettings", "main"]

DEFAULT_TARGET = "localhost:8500"
ENV_PREFIX = "DIGITSERVE_"

EXIT_OK = 0
EXIT_NOT_SERVING = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_INTERRUPTED = 130
#: A failed call exits with this plus its gRPC status code number.
EXIT_RPC_BASE = 20

EXIT_CODES_HELP = f"""\
exit status:
  {EXIT_OK}   success (health: SERVING)
  {EXIT_NOT_SERVING}   health: the server or service is not SERVING
  {EXIT_USAGE}   bad command line or environment
  {EXIT_INPUT}   an input file could not be read or is not a PNG/JPEG image
  {EXIT_RPC_BASE}+N  a call failed with gRPC status code N, e.g. \
{EXIT_RPC_BASE + 3} INVALID_ARGUMENT,
       {EXIT_RPC_BASE + 4} DEADLINE_EXCEEDED, {EXIT_RPC_BASE + 5} NOT_FOUND, \
{EXIT_RPC_BASE + 8} RESOURCE_EXHAUSTED, {EXIT_RPC_BASE + 14} UNAVAILABLE
"""


class UsageError(Exception):
    """A bad flag or environment variable."""


@dataclass(frozen=True, slots=True)
class CliSettings:
    """Settings shared by every command, from flags, then ``DIGITSERVE_*`` variables."""

    target: str = DEFAULT_TARGET
    """Server address: host:port, dns:///name:port, or several ip:port joined by commas."""
    timeout: float = DEFAULT_TIMEOUT
    """Deadline of each call, in seconds."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> CliSettings:
        """Flags win over environment variables, which win over defaults."""
        target = (
            getattr(args, "target", None) or environ.get(f"{ENV_PREFIX}TARGET") or DEFAULT_TARGET
        )
        timeout_text = getattr(args, "timeout", None) or environ.get(f"{ENV_PREFIX}TIMEOUT")
        timeout = DEFAULT_TIMEOUT
        if timeout_text:
            try:
                timeout = check_timeout(float(timeout_text))
            except ValueError:
                raise UsageError(
                    f"timeout must be a number of seconds > 0, got {timeout_text!r}"
                ) from None
        settings = cls(target=target, timeout=timeout)
        try:
            channel_target(settings.targets())
        except ValueError as error:
            raise UsageError(str(error)) from None
        return settings

    def targets(self) -> str | list[str]:
        """The target for ``DigitClient``: ``ip:port,ip:port`` is a list of replicas."""
        if "," in self.target and not self.target.startswith(("ipv4:", "ipv6:")):
            return [part.strip() for part in self.target.split(",")]
        return self.target


def build_parser() -> argparse.ArgumentParser:
    """The command line parser."""
    common = argparse.ArgumentParser(add_help=False)
    _add_common_options(common, argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="digitserve",
        description="Classify handwritten digits with a digitserve server.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser(
        "classify",
        parents=[common],
        help="classify PNG/JPEG image files",
        description="Classify PNG/JPEG image files; prints each file's digit and confidence.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    classify.add_argument("files", nargs="+", metavar="FILE", help="PNG or JPEG image")
    classify.add_argument("--model", help="model name (default: the server's default model)")
    version = classify.add_mutually_exclusive_group()
    version.add_argument(
        "--version",
        type=_positive_int,
        help="model version number (default: the one labelled stable, else the newest)",
    )
    version.add_argument("--label", help="model version label, e.g. stable or canary")
    classify.add_argument("--json", action="store_true", help="print a JSON array")

    status = commands.add_parser(
        "status",
        parents=[common],
        help="show models, versions, states and metadata",
        description="Show the models the server knows, their versions, states and metadata.",
    )
    status.add_argument("--model", help="only this model")
    status.add_argument("--json", action="store_true", help="print JSON")

    health = commands.add_parser(
        "health",
        parents=[common],
        help="check serving health (exit status 0 only if SERVING)",
        description="Print the grpc.health.v1 status; the exit status is 0 only if SERVING.",
    )
    health.add_argument("--service", default="", help="service name (default: the server)")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _add_common_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--target",
        default=default,
        help=f"server address: host:port, dns:///name:port, or ip:port,ip:port "
        f"(default: ${ENV_PREFIX}TARGET, else {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        default=default,
        metavar="SECONDS",
        help=f"deadline of each call (default: ${ENV_PREFIX}TIMEOUT, else {DEFAULT_TIMEOUT:g})",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    try:
        settings = CliSettings.from_args(args, os.environ)
        with DigitClient(settings.targets(), timeout=settings.timeout) as client:
            if args.command == "classify":
                return _classify(client, args, settings, sys.stdout, sys.stderr)
            if args.command == "status":
                return _status(client, args, sys.stdout)
            return _health(client, args, sys.stdout)
    except UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"digitserve: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except DigitServeError as error:
        print(f"error: {error.code.name}: {error.details}", file=sys.stderr)
        return _exit_code(error)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _exit_code(error: DigitServeError) -> int:
    return EXIT_RPC_BASE + int(error.code.value[0])


def _classify(
    client: DigitClient,
    args: argparse.Namespace,
    settings: CliSettings,
    out: TextIO,
    err: TextIO,
) -> int:
    # Every file is read first, so an unreadable one is reported and the others
    # are still classified (over one stream, whose item errors are per file too).
    outcomes: list[dict[str, Any]] = []
    readable: list[tuple[dict[str, Any], digitserve_pb2.Image]] = []
    for path in args.files:
        outcome: dict[str, Any] = {"file": path}
        outcomes.append(outcome)
        try:
            readable.append((outcome, to_image(path)))
        except (OSError, ValueError) as error:
            message = _local_error_message(error)
            print(f"error: {path}: {message}", file=err)
            outcome["error"] = {"code": "INPUT_ERROR", "message": message}
    exit_code = EXIT_INPUT if len(readable) < len(outcomes) else EXIT_OK

    if readable:
        results = client.classify_many(
            [image for _, image in readable],
            model=args.model,
            version=args.version,
            label=args.label,
            timeout=settings.timeout,
            raise_on_error=False,
        )
        for (outcome, _), result in zip(readable, results, strict=True):
            outcome.update(_result_fields(result))
            if result.error is not None:
                code = result.error.code
                print(f"error: {outcome['file']}: {code.name}: {result.error.message}", file=err)
                if exit_code == EXIT_OK:
                    exit_code = EXIT_RPC_BASE + int(code.value[0])
            elif not args.json:
                digit, confidence = outcome["digit"], outcome["confidence"]
                print(f"{outcome['file']}: {digit} (confidence {confidence:.4f})", file=out)

    if args.json:
        json.dump(outcomes, out, indent=2)
        out.write("\n")
    return exit_code


def _local_error_message(error: OSError | ValueError) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read: {error.strerror}"
    return str(error)


def _result_fields(result: ItemResult) -> dict[str, Any]:
    if result.prediction is None:
        error = result.error
        return {
            "error": {
                "code": error.code.name if error else "UNKNOWN",
                "message": error.message if error else "",
            }
        }
    prediction = result.prediction
    return {
        "digit": prediction.digit,
        "confidence": prediction.confidence,
        "probabilities": list(prediction.probabilities),
        "model": prediction.model_name,
        "version": prediction.model_version,
    }


def _status(client: DigitClient, args: argparse.Namespace, out: TextIO) -> int:
    models = client.status(args.model)
    if args.json:
        json.dump([_jsonable(model) for model in models], out, indent=2)
        out.write("\n")
    else:
        out.write(_status_table(models))
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    """Dataclasses, enums, datetimes, mappings and tuples as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _status_table(models: Sequence[ModelStatus]) -> str:
    header = ("MODEL", "VERSION", "STATE", "LABELS", "ACCURACY", "TRAINED AT", "REASON")
    rows: list[tuple[str, ...]] = []
    for model in models:
        if not model.versions:
            rows.append((model.name, "-", "-", "", "", "", "no versions"))
        for version in model.versions:
            number = str(version.version)
            if version.version == model.default_version:
                number += "*"
            metadata = version.metadata
            rows.append(
                (
                    model.name,
                    number,
                    version.state.value,
                    ",".join(version.labels),
                    f"{metadata.test_accuracy:.4f}" if metadata else "",
                    _short_time(metadata.trained_at) if metadata else "",
                    version.reason,
                )
            )
    if not rows:
        return "no models\n"
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines) + "\n* the default version\n"


def _short_time(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value else ""


def _health(client: DigitClient, args: argparse.Namespace, out: TextIO) -> int:
    status = client.health(args.service)
    print(status, file=out)
    return EXIT_OK if status == "SERVING" else EXIT_NOT_SERVING


if __name__ == "__main__":
    sys.exit(main())
