"""``digitserve-server``: serve the models of a repository over gRPC."""

from __future__ import annotations

import asyncio
import os
import sys

from pydantic import ValidationError
from pydantic_settings import SettingsError

from . import logs
from .app import serve
from .model import configure_threads
from .settings import parse_settings


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up notices bypass logging; keep its warnings and errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except (ValidationError, SettingsError, ValueError) as exc:
        print(f"digitserve-server: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    configure_threads(settings.tf_intra_op_threads, settings.tf_inter_op_threads)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
