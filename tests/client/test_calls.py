"""Per-call deadlines and request ids."""

from __future__ import annotations

import re

import pytest

from digitserve.client.calls import (
    REQUEST_ID_KEY,
    CallDefaults,
    call_metadata,
    check_request_id,
    check_timeout,
    echoed_request_id,
)


def test_generated_request_ids_are_fresh_uuid4_hex() -> None:
    first, second = check_request_id(None), check_request_id(None)
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


def test_caller_request_id_is_sent_as_x_request_id() -> None:
    assert call_metadata(check_request_id("job-42/item-7")) == (("x-request-id", "job-42/item-7"),)
    assert REQUEST_ID_KEY == "x-request-id"


@pytest.mark.parametrize("request_id", ["", "a\nb", "é", "x" * 129])
def test_request_ids_that_cannot_be_metadata_are_rejected(request_id: str) -> None:
    with pytest.raises(ValueError, match="request id"):
        check_request_id(request_id)


class FinishedCall:
    def __init__(self, initial: object = (), trailing: object = ()) -> None:
        self._initial = initial
        self._trailing = trailing

    def initial_metadata(self) -> object:
        return self._initial

    def trailing_metadata(self) -> object:
        return self._trailing


def test_echoed_request_id_is_read_from_trailing_then_initial_metadata() -> None:
    assert echoed_request_id(FinishedCall(trailing=[("x-request-id", "t")]), "sent") == "t"
    assert echoed_request_id(FinishedCall(initial=(("x-request-id", "i"),)), "sent") == "i"


def test_without_an_echo_the_sent_request_id_is_kept() -> None:
    assert echoed_request_id(FinishedCall(trailing=[("other", "v")]), "sent") == "sent"
    assert echoed_request_id(FinishedCall(initial=None, trailing=None), "sent") == "sent"
    assert echoed_request_id(object(), "sent") == "sent"


@pytest.mark.parametrize("timeout", [0, -1.0, float("inf"), float("nan")])
def test_timeouts_must_be_finite_and_positive(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        check_timeout(timeout)


def test_timeouts_must_be_numbers() -> None:
    with pytest.raises(TypeError, match="timeout"):
        check_timeout("10")  # type: ignore[arg-type]


def test_call_defaults_are_validated_up_front() -> None:
    assert CallDefaults().timeout == 10.0
    with pytest.raises(ValueError, match="stream_timeout"):
        CallDefaults(stream_timeout=0)
    with pytest.raises(ValueError, match="max_images_per_request"):
        CallDefaults(max_images_per_request=0)
