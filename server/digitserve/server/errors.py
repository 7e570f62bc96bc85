"""Domain errors. Each carries the name of the gRPC status code it maps to.

The core raises these without knowing about gRPC; the transport turns them into
statuses in one place (``grpc_api.status_for``). The message is meant for the
caller: it says what was wrong and what is allowed. Anything that is not a
``ServingError`` is a bug and is reported to callers as a generic INTERNAL.
"""

from __future__ import annotations

from typing import ClassVar


class ServingError(Exception):
    """Base class of errors whose message may be shown to the caller."""

    code: ClassVar[str] = "INTERNAL"
    # The bounded reason label used for metrics (never the message itself).
    reason: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ServingError):
    code = "INVALID_ARGUMENT"
    reason = "invalid_input"


class ModelNotFound(ServingError):
    code = "NOT_FOUND"
    reason = "not_found"


class ModelUnavailable(ServingError):
    code = "UNAVAILABLE"
    reason = "unavailable"


class QueueFull(ServingError):
    code = "RESOURCE_EXHAUSTED"
    reason = "queue_full"


class DeadlineExpired(ServingError):
    code = "DEADLINE_EXCEEDED"
    reason = "deadline"


class Cancelled(ServingError):
    code = "CANCELLED"
    reason = "cancelled"


class BatchFailed(ServingError):
    """The model call that held this item failed; details are in the server log."""

    code = "INTERNAL"
    reason = "model_error"
