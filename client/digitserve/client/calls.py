"""What every call carries: a deadline, a request id, and the defaults a client applies."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MAX_IMAGES_PER_REQUEST",
    "DEFAULT_STREAM_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "REQUEST_ID_KEY",
    "CallDefaults",
    "call_metadata",
    "check_request_id",
    "echoed_request_id",
    "new_request_id",
]

#: The metadata key of the request id sent with every call.
REQUEST_ID_KEY = "x-request-id"

#: Deadline of unary calls, in seconds, unless a client or call says otherwise.
DEFAULT_TIMEOUT = 10.0

#: Deadline of a whole ``classify_many`` stream, in seconds, unless said otherwise.
DEFAULT_STREAM_TIMEOUT = 300.0

#: Most images in one ``Classify`` call: the server's default ``max_images_per_request``.
DEFAULT_MAX_IMAGES_PER_REQUEST = 1024

#: Longest request id sent.
MAX_REQUEST_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class CallDefaults:
    """What a client applies to calls that do not say otherwise."""

    timeout: float = DEFAULT_TIMEOUT
    """Deadline of a unary call (``classify``, each ``classify_batch`` chunk, ``status``,
    ``health``), in seconds."""
    stream_timeout: float = DEFAULT_STREAM_TIMEOUT
    """Deadline of a whole ``classify_many`` stream, in seconds."""
    max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST
    """Most images ``classify_batch`` puts in one call (the server's limit)."""
    wait_for_ready: bool = False
    """Whether calls wait (until their deadline) for a server to be reachable instead of
    failing at once with UNAVAILABLE."""

    def __post_init__(self) -> None:
        check_timeout(self.timeout, "timeout")
        check_timeout(self.stream_timeout, "stream_timeout")
        if self.max_images_per_request < 1:
            raise ValueError(
                f"max_images_per_request must be >= 1, got {self.max_images_per_request}"
            )


def check_timeout(timeout: float, name: str = "timeout") -> float:
    """``timeout`` if it is a finite number of seconds > 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {timeout!r}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {timeout!r}")
    return float(timeout)


def new_request_id() -> str:
    """A fresh random request id (32 hex digits)."""
    return uuid.uuid4().hex


def check_request_id(request_id: str | None) -> str:
    """The caller's request id if it can be sent as metadata, else a new one when None."""
    if request_id is None:
        return new_request_id()
    if not (
        0 < len(request_id) <= MAX_REQUEST_ID_LENGTH
        and request_id.isascii()
        and request_id.isprintable()
    ):
        raise ValueError(
            f"a request id must be 1 to {MAX_REQUEST_ID_LENGTH} printable ASCII characters, "
            f"got {request_id!r}"
        )
    return request_id


def call_metadata(request_id: str) -> tuple[tuple[str, str], ...]:
    """The metadata sent with a call."""
    return ((REQUEST_ID_KEY, request_id),)


def echoed_request_id(call: Any, sent: str) -> str:
    """The request id the server echoed in the call's metadata, else the one sent.

    Best effort: ``call`` is a finished grpc call or ``RpcError`` (sync or
    asyncio); metadata that cannot be read is ignored.
    """
    for getter_name in ("trailing_metadata", "initial_metadata"):
        getter = getattr(call, getter_name, None)
        if not callable(getter):
            continue
        try:
            metadata = getter()
        except Exception:  # some call states have no metadata to give
            continue
        echoed = _find(metadata, REQUEST_ID_KEY)
        if echoed:
            return echoed
    return sent


def _find(metadata: Iterable[tuple[str, str | bytes]] | None, key: str) -> str | None:
    if metadata is None or not isinstance(metadata, Iterable):
        return None
    for item in metadata:
        if isinstance(item, tuple) and len(item) == 2 and item[0] == key:
            value = item[1]
            return value.decode("ascii", "replace") if isinstance(value, bytes) else value
    return None
