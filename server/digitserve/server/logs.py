"""Logging set-up for the server: text or one JSON object per line, with request ids."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class RequestContext:
    """The request being served: its id, and the model version that answers it."""

    request_id: str
    model: str = ""
    version: str = ""


# Set for the length of each RPC by the server's request tracker (metrics.py).
current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "current_request", default=None
)


def note_model(model: str) -> None:
    """Record which model the current request asked for (logs and metrics labels)."""
    ctx = current_request.get()
    if ctx is not None:
        ctx.model = model


def note_version(model: str, version: int) -> None:
    """Record which version answers the current request (logs and metrics labels)."""
    ctx = current_request.get()
    if ctx is not None:
        ctx.model, ctx.version = model, str(version)


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            ctx = current_request.get()
            record.request_id = ctx.request_id if ctx is not None else None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key != "request_id" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [request_id={rid}]" if rid else text


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger; called once, from an entry point."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
