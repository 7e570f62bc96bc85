"""What the clients do before and around the wire: argument checks, deadlines, failures.

No gRPC server runs here. A refused port and a silent port are real network
failures the SDK must turn into typed errors; calls against a real server are
tested end to end elsewhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from digitserve.client import (
    AsyncDigitClient,
    ChannelSettings,
    DeadlineExceeded,
    DigitClient,
    RetryPolicy,
    Unavailable,
)

NO_RETRIES = ChannelSettings(retry=RetryPolicy(max_attempts=1))
DIGIT = np.zeros((28, 28), dtype=np.uint8)


@pytest.fixture
def refused_client(refused_address: str) -> Iterator[DigitClient]:
    with DigitClient(refused_address, timeout=5, channel_settings=NO_RETRIES) as client:
        yield client


def test_refused_connection_raises_unavailable_with_the_request_id(
    refused_client: DigitClient,
) -> None:
    with pytest.raises(Unavailable) as info:
        refused_client.classify(DIGIT, request_id="req-1")
    assert info.value.request_id == "req-1"
    assert info.value.details


@pytest.mark.parametrize("method", ["status", "health"])
def test_every_unary_call_maps_failures(refused_client: DigitClient, method: str) -> None:
    with pytest.raises(Unavailable) as info:
        getattr(refused_client, method)()
    assert info.value.request_id  # a generated one


def test_stream_failure_raises_unavailable(refused_client: DigitClient) -> None:
    with pytest.raises(Unavailable):
        list(refused_client.classify_many([DIGIT, DIGIT]))


def test_call_timeout_is_the_deadline(silent_address: str) -> None:
    with DigitClient(silent_address, timeout=30) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.classify(DIGIT, timeout=0.2)
        assert time.monotonic() - started < 5


def test_client_timeout_is_the_default_deadline(silent_address: str) -> None:
    with DigitClient(silent_address, timeout=0.2) as client, pytest.raises(DeadlineExceeded):
        client.status()


def test_stream_deadline_is_the_stream_timeout(silent_address: str) -> None:
    with (
        DigitClient(silent_address, timeout=30, stream_timeout=0.2) as client,
        pytest.raises(DeadlineExceeded),
    ):
        list(client.classify_many([DIGIT]))


def test_empty_batch_returns_no_predictions_without_a_call(refused_client: DigitClient) -> None:
    assert refused_client.classify_batch([]) == []


def test_bad_input_fails_before_any_call(refused_client: DigitClient) -> None:
    with pytest.raises(TypeError, match="numpy array"):
        refused_client.classify(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        refused_client.classify(DIGIT, version=1, label="stable")


@pytest.mark.parametrize("window", [0, -1, 1.5, True])
def test_classify_many_checks_its_window_when_called(
    refused_client: DigitClient, window: int
) -> None:
    with pytest.raises(ValueError, match="window"):
        refused_client.classify_many([DIGIT], window=window)


def test_closed_client_refuses_calls(refused_address: str) -> None:
    client = DigitClient(refused_address)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.status()


def test_invalid_client_settings_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="timeout"):
        DigitClient("localhost:8500", timeout=0)
    with pytest.raises(ValueError, match="dns:///"):
        DigitClient(["a:1", "b:2"])


# asyncio


async def test_async_refused_connection_raises_unavailable(refused_address: str) -> None:
    async with AsyncDigitClient(refused_address, channel_settings=NO_RETRIES) as client:
        with pytest.raises(Unavailable) as info:
            await client.classify(DIGIT, request_id="req-2")
        assert info.value.request_id == "req-2"
        with pytest.raises(Unavailable):
            await client.health()


async def test_async_stream_failure_raises_unavailable(refused_address: str) -> None:
    async with AsyncDigitClient(refused_address, channel_settings=NO_RETRIES) as client:
        with pytest.raises(Unavailable):
            async for _ in client.classify_many([DIGIT, DIGIT]):
                pass


async def test_async_call_timeout_is_the_deadline(silent_address: str) -> None:
    async with AsyncDigitClient(silent_address, timeout=30) as client:
        with pytest.raises(DeadlineExceeded):
            await client.status(timeout=0.2)


async def test_async_stream_deadline_is_the_stream_timeout(silent_address: str) -> None:
    async with AsyncDigitClient(silent_address, stream_timeout=0.2) as client:
        with pytest.raises(DeadlineExceeded):
            async for _ in client.classify_many([DIGIT]):
                pass


async def test_async_client_can_be_built_outside_the_loop_and_closed_unused(
    refused_address: str,
) -> None:
    client = AsyncDigitClient(refused_address)
    await client.close()
    with pytest.raises(RuntimeError, match="closed"):
        await client.status()
