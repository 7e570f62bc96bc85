"""The errors the SDK raises for failed calls, one class per status code callers act on.

Every failed RPC, and every failed item of a stream, surfaces as a
``DigitServeError`` carrying the gRPC status ``code`` and the server's
``details``; ``grpc.RpcError`` never reaches the caller. Codes without a class
of their own (INTERNAL, CANCELLED, UNKNOWN, ...) are raised as the base class.

Bad inputs caught on the client, before anything is sent, are ordinary
``TypeError`` / ``ValueError`` / ``OSError`` exceptions, as for any Python API.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

__all__ = [
    "DeadlineExceeded",
    "DigitServeError",
    "InvalidArgument",
    "NotFound",
    "ProtocolError",
    "ResourceExhausted",
    "Unavailable",
    "error_for_code",
    "error_from_rpc",
    "status_code_from_number",
]


class DigitServeError(Exception):
    """A call (or one item of a stream) failed with a gRPC status other than OK."""

    #: The code this class stands for; the base class stands for every other code.
    default_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        *,
        request_id: str | None = None,
        index: int | None = None,
    ) -> None:
        super().__init__(code, details)
        self.code = code
        """The gRPC status code."""
        self.details = details
        """The server's message: what was wrong and, where it applies, what is allowed."""
        self.request_id = request_id
        """The ``x-request-id`` of the call (as echoed by the server when it echoes one)."""
        self.index = index
        """For a failed ``classify_many`` item: its position in the input; else None."""

    def __str__(self) -> str:
        where = f"item {self.index}: " if self.index is not None else ""
        return f"{self.code.name}: {where}{self.details}"


class InvalidArgument(DigitServeError):
    """The request was malformed: bad image, too many images, bad model selector."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(DigitServeError):
    """The requested model, version or label does not exist."""

    default_code = grpc.StatusCode.NOT_FOUND


class Unavailable(DigitServeError):
    """No server could be reached, no version is loaded yet, or the server is draining.

    The SDK already retried (see ``RetryPolicy``); retrying later is safe.
    """

    default_code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(DigitServeError):
    """The server's queue is full (or a message was too large): back off before retrying."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(DigitServeError):
    """The call's deadline passed before it was answered."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class ProtocolError(DigitServeError):
    """The server answered something the contract does not allow (a server bug).

    Raised with code INTERNAL, e.g. when a response holds fewer predictions
    than the request held images.
    """

    default_code = grpc.StatusCode.INTERNAL

    def __init__(self, details: str, *, request_id: str | None = None) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, details, request_id=request_id)


_CLASS_BY_CODE: dict[grpc.StatusCode, type[DigitServeError]] = {
    cls.default_code: cls
    for cls in (InvalidArgument, NotFound, Unavailable, ResourceExhausted, DeadlineExceeded)
}

_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_number(number: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` for a numeric code (as in ``google.rpc.Code``); UNKNOWN if none."""
    return _CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_for_code(
    code: grpc.StatusCode,
    details: str,
    *,
    request_id: str | None = None,
    index: int | None = None,
) -> DigitServeError:
    """The error of the most specific class for ``code``."""
    cls = _CLASS_BY_CODE.get(code, DigitServeError)
    return cls(code, details, request_id=request_id, index=index)


def error_from_rpc(error: grpc.RpcError, *, request_id: str | None = None) -> DigitServeError:
    """Converts a failed call from grpc (sync or asyncio) into a ``DigitServeError``.

    grpc raises its failures as objects that are both ``RpcError`` and ``Call``
    (with ``code()`` and ``details()``); a bare ``RpcError`` without them
    becomes UNKNOWN.
    """
    code_method = getattr(error, "code", None)
    details_method = getattr(error, "details", None)
    code = code_method() if callable(code_method) else None
    details = details_method() if callable(details_method) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for_code(code, details or code.name, request_id=request_id)
