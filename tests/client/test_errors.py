"""The error hierarchy and the mapping from grpc failures."""

from __future__ import annotations

import grpc
import pytest

from digitserve.client import (
    DeadlineExceeded,
    DigitServeError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from digitserve.client.errors import error_for_code, error_from_rpc, status_code_from_number


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, NotFound),
        (grpc.StatusCode.UNAVAILABLE, Unavailable),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_common_codes_have_their_own_class(code: grpc.StatusCode, cls: type) -> None:
    error = error_for_code(code, "details", request_id="r1")
    assert type(error) is cls
    assert isinstance(error, DigitServeError)
    assert (error.code, error.details, error.request_id, error.index) == (
        code,
        "details",
        "r1",
        None,
    )


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
    ],
)
def test_other_codes_are_the_base_class(code: grpc.StatusCode) -> None:
    error = error_for_code(code, "x")
    assert type(error) is DigitServeError
    assert error.code == code


def test_message_names_the_code_then_the_details() -> None:
    error = error_for_code(grpc.StatusCode.NOT_FOUND, "no model 'x'")
    assert str(error) == "NOT_FOUND: no model 'x'"


class FailedCall(grpc.RpcError):
    """A grpc failure as grpc raises it: an RpcError that is also a finished Call."""

    def __init__(self, code: grpc.StatusCode, details: str | None) -> None:
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details


def test_rpc_errors_become_typed_errors_with_code_and_details() -> None:
    error = error_from_rpc(
        FailedCall(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"), request_id="r2"
    )
    assert isinstance(error, ResourceExhausted)
    assert (error.details, error.request_id) == ("queue full", "r2")


def test_rpc_error_without_details_uses_the_code_name() -> None:
    error = error_from_rpc(FailedCall(grpc.StatusCode.UNAVAILABLE, None))
    assert isinstance(error, Unavailable)
    assert error.details == "UNAVAILABLE"


def test_bare_rpc_error_becomes_unknown() -> None:
    error = error_from_rpc(grpc.RpcError())
    assert type(error) is DigitServeError
    assert error.code == grpc.StatusCode.UNKNOWN


def test_status_code_numbers_map_to_codes() -> None:
    for code in grpc.StatusCode:
        assert status_code_from_number(code.value[0]) is code
    assert status_code_from_number(99) is grpc.StatusCode.UNKNOWN
