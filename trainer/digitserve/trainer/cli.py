"""``digitserve-train``: train and publish a model, or report on a published version.

    digitserve-train [train] [--data-dir D] [--model-repo R] [--architecture cnn] ...
    digitserve-train report [--model-repo R] [--model-name mnist] [--version N] [--out DIR]

Exit codes: 0 published / report written, 1 error (data, repository, export),
2 invalid settings, 3 the model failed the quality gate and was not published.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import CliApp

from digitserve.trainer.settings import ReportSettings, TrainSettings

logger = logging.getLogger("digitserve.trainer")

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATE = 3
COMMANDS = ("train", "report")


def _configure_logging(level: str) -> None:
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if not root.handlers:  # a host that configured logging already (pytest) keeps its own
        root.addHandler(handler)
    root.setLevel(level)
    # TensorFlow logs routine INFO lines (assets written, renamed inputs) through its own
    # handler as well as the root one; keep its warnings only, unless debugging.
    for name in ("tensorflow", "absl"):
        library = logging.getLogger(name)
        library.setLevel(level if level == "DEBUG" else "WARNING")
        library.propagate = True


def _describe_errors(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]).replace("_", "-")
        prefix = f"--{where}: " if where else ""
        lines.append(f"invalid setting {prefix}{error['msg']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and args[0] in COMMANDS else "train"
    # Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings_class: type[TrainSettings | ReportSettings] = (
        ReportSettings if command == "report" else TrainSettings
    )
    try:
        settings = CliApp.run(settings_class, cli_args=args)
    except ValidationError as exc:
        print(_describe_errors(exc), file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(settings.log_level)

    # Imported here, not at the top: they load TensorFlow, which --help does not need.
    from digitserve.server.repository import RepositoryError
    from digitserve.trainer.data import DataError
    from digitserve.trainer.export import ExportError
    from digitserve.trainer.gate import QualityGateError

    try:
        if isinstance(settings, ReportSettings):
            from digitserve.trainer.report import HTML_FILE, report_version

            out = report_version(settings)
            print(f"report written to {out / HTML_FILE}")
        else:
            from digitserve.trainer.train import run

            result = run(settings)
            print(
                f"published {result.model_name} version {result.version} in "
                f"{result.version_dir}: test accuracy {result.test_accuracy:.2%}, "
                f"loss {result.test_loss:.4f}"
            )
    except QualityGateError as exc:
        logger.error("%s; not published", exc)
        return EXIT_GATE
    except (DataError, RepositoryError, ExportError) as exc:
        logger.error("%s", exc)
        return EXIT_ERROR
    return 0
