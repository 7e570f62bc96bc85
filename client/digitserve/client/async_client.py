"""``AsyncDigitClient``: the asyncio SDK, on a ``grpc.aio.Channel``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from contextlib import aclosing, suppress
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from digitserve.client.calls import (
    DEFAULT_MAX_IMAGES_PER_REQUEST,
    DEFAULT_STREAM_TIMEOUT,
    DEFAULT_TIMEOUT,
    CallDefaults,
    call_metadata,
    check_request_id,
    check_timeout,
    echoed_request_id,
)
from digitserve.client.channel import ChannelSettings, create_aio_channel
from digitserve.client.errors import ProtocolError, error_from_rpc
from digitserve.client.inputs import ImageInput, to_image
from digitserve.client.messages import chunked, classify_request, model_selector, stream_request
from digitserve.client.results import (
    ItemResult,
    Prediction,
    item_result_from_proto,
    predictions_from_response,
)
from digitserve.client.status import ModelStatus, models_from_response
from digitserve.client.streaming import ResultOrder
from digitserve.client.sync_client import DEFAULT_WINDOW
from digitserve.v1 import digitserve_pb2, digitserve_pb2_grpc

__all__ = ["AsyncDigitClient"]

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class AsyncDigitClient:
    """An asyncio client of a digitserve server (or of several replicas).

    Targets, deadlines, request ids, retries and errors are as for
    ``DigitClient``. The channel is created on first use, inside the running
    event loop, and belongs to that loop: use one client per loop. Close it
    with ``await client.close()`` or ``async with``.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        stream_timeout: float = DEFAULT_STREAM_TIMEOUT,
        max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST,
        wait_for_ready: bool = False,
        channel_settings: ChannelSettings | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._defaults = CallDefaults(
            timeout=timeout,
            stream_timeout=stream_timeout,
            max_images_per_request=max_images_per_request,
            wait_for_ready=wait_for_ready,
        )
        self._target = target
        self._channel_settings = channel_settings
        self._credentials = credentials
        self._connection: _Connection | None = None
        self._inspection: _Connection | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls still running are cancelled."""
        self._closed = True
        for connection in (self._connection, self._inspection):
            if connection is not None:
                await connection.channel.close(grace=None)

    def _connect(self, *, inspect: bool = False) -> _Connection:
        """The channel for calls; with ``inspect``, the one for status and health, which
        skips client-side health checking so that a replica that is not SERVING can
        still say so."""
        if self._closed:
            raise RuntimeError("the client is closed")
        connection = self._inspection if inspect else self._connection
        if connection is None:
            settings = self._channel_settings or ChannelSettings()
            if inspect:
                settings = replace(settings, health_check=False)
            channel = create_aio_channel(self._target, settings, credentials=self._credentials)
            connection = _Connection(
                channel=channel,
                stub=digitserve_pb2_grpc.DigitClassifierStub(channel),
                health=health_pb2_grpc.HealthStub(channel),
            )
            if inspect:
                self._inspection = connection
            else:
                self._connection = connection
        return connection

    async def classify(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
        request_id: str | None = None,
    ) -> Prediction:
        """Classifies one image; see ``DigitClient.classify``."""
        request = classify_request([await _to_image(image)], model_selector(model, version, label))
        response = await self._unary(self._connect().stub.Classify, request, timeout, request_id)
        return predictions_from_response(response, expected=1)[0]

    async def classify_batch(
        self,
        images: Iterable[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
        request_id: str | None = None,
    ) -> list[Prediction]:
        """Classifies many images with unary calls, one after the other; see
        ``DigitClient.classify_batch``."""
        selector = model_selector(model, version, label)
        request_id = check_request_id(request_id)
        classify = self._connect().stub.Classify
        predictions: list[Prediction] = []
        for chunk in chunked(images, self._defaults.max_images_per_request):
            request = classify_request([await _to_image(image) for image in chunk], selector)
            response = await self._unary(classify, request, timeout, request_id)
            predictions.extend(predictions_from_response(response, expected=len(chunk)))
        return predictions

    @overload
    def classify_many(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        *,
        window: int = ...,
        model: str | None = ...,
        version: int | None = ...,
        label: str | None = ...,
        timeout: float | None = ...,
        request_id: str | None = ...,
        raise_on_error: Literal[True] = ...,
    ) -> AsyncIterator[Prediction]: ...

    @overload
    def classify_many(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        *,
        window: int = ...,
        model: str | None = ...,
        version: int | None = ...,
        label: str | None = ...,
        timeout: float | None = ...,
        request_id: str | None = ...,
        raise_on_error: Literal[False],
    ) -> AsyncIterator[ItemResult]: ...

    def classify_many(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        *,
        window: int = DEFAULT_WINDOW,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        raise_on_error: bool = True,
    ) -> AsyncIterator[Prediction] | AsyncIterator[ItemResult]:
        """Classifies a stream of images over one ``ClassifyStream`` call, in input order.

        An async iterator (``async for``); ``images`` may be an iterable or an
        async iterable. Behaviour as for ``DigitClient.classify_many``; the
        items are sent by a task of this call. ``aclose()`` cancels the call; to
        leave an ``async for`` early without waiting for garbage collection to
        do that, iterate inside ``contextlib.aclosing(client.classify_many(...))``.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        selector = model_selector(model, version, label)
        stream_deadline = check_timeout(
            self._defaults.stream_timeout if timeout is None else timeout
        )
        request_id = check_request_id(request_id)
        results = self._stream(images, selector, window, stream_deadline, request_id)
        if raise_on_error:
            return _predictions_or_raise(results, request_id)
        return results

    async def status(
        self,
        model: str | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
        request_id: str | None = None,
    ) -> list[ModelStatus]:
        """The status of one model, or of every model the server knows (in name order)."""
        request = digitserve_pb2.GetModelStatusRequest(name=model or "")
        response = await self._unary(
            self._connect(inspect=True).stub.GetModelStatus, request, timeout, request_id
        )
        return models_from_response(response)

    async def health(
        self,
        service: str = "",
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the gRPC deadline, sent to the server
        request_id: str | None = None,
    ) -> str:
        """The serving status name of ``service``; see ``DigitClient.health``."""
        request = health_pb2.HealthCheckRequest(service=service)
        health = self._connect(inspect=True).health
        response = await self._unary(health.Check, request, timeout, request_id)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None,  # noqa: ASYNC109 - the gRPC deadline
        request_id: str | None,
    ) -> ResponseT:
        """Calls ``method`` with the call's deadline and request id; maps its failure."""
        request_id = check_request_id(request_id)
        try:
            return await method(
                request,
                timeout=check_timeout(self._defaults.timeout if timeout is None else timeout),
                metadata=call_metadata(request_id),
                wait_for_ready=self._defaults.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error, request_id=echoed_request_id(error, request_id)) from None

    async def _stream(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        selector: digitserve_pb2.ModelSelector | None,
        window: int,
        timeout: float,  # noqa: ASYNC109 - the gRPC deadline
        request_id: str,
    ) -> AsyncGenerator[ItemResult, None]:
        call = self._connect().stub.ClassifyStream(
            None,  # no request iterator: the feed writes the requests
            timeout=timeout,
            metadata=call_metadata(request_id),
            wait_for_ready=self._defaults.wait_for_ready,
        )
        feed = _RequestFeed(call, images, selector, window)
        order = ResultOrder()
        writer = asyncio.create_task(feed.run(), name="digitserve-classify-many-writer")
        try:
            try:
                while True:
                    response = await call.read()
                    if not isinstance(response, digitserve_pb2.ClassifyStreamResponse):
                        break  # grpc.aio.EOF: the server ended the stream
                    feed.answered()
                    for result in order.add(item_result_from_proto(response), sent=feed.sent):
                        yield result
            except grpc.RpcError as error:
                raise error_from_rpc(
                    error, request_id=echoed_request_id(error, request_id)
                ) from None
            order.finish(sent=feed.sent)
            input_error = await writer
            if input_error is not None:
                raise input_error
            if not feed.complete:
                raise ProtocolError("the server ended the stream before every item was sent")
        finally:
            call.cancel()
            if not writer.done():
                writer.cancel()
            with suppress(asyncio.CancelledError):
                await writer


async def _predictions_or_raise(
    results: AsyncGenerator[ItemResult, None], request_id: str
) -> AsyncGenerator[Prediction, None]:
    """The predictions of ``results``; the first failed item is raised (ending the stream)."""
    async with aclosing(results):
        async for result in results:
            yield result.unwrap(request_id=request_id)


async def _to_image(image: ImageInput) -> digitserve_pb2.Image:
    """``to_image``, reading files in a worker thread so the event loop is not blocked."""
    if isinstance(image, str | os.PathLike):
        return await asyncio.to_thread(to_image, image)
    return to_image(image)


@dataclass(frozen=True, slots=True)
class _Connection:
    """The channel of an ``AsyncDigitClient`` and its stubs."""

    channel: grpc.aio.Channel
    stub: digitserve_pb2_grpc.DigitClassifierAsyncStub
    health: Any  # grpc_health ships no type stubs


class _RequestFeed:
    """Writes the requests of one ``ClassifyStream`` call, at most ``window`` unanswered."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[
            digitserve_pb2.ClassifyStreamRequest, digitserve_pb2.ClassifyStreamResponse
        ],
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        selector: digitserve_pb2.ModelSelector | None,
        window: int,
    ) -> None:
        self._call = call
        self._images = images
        self._selector = selector
        self._slots = asyncio.Semaphore(window)
        self.sent = 0
        """How many items have been written (their indices are 0..sent-1)."""
        self.complete = False
        """Whether every item has been written and the call half-closed."""

    def answered(self) -> None:
        """Frees the slot of one answered item."""
        self._slots.release()

    async def run(self) -> Exception | None:
        """Writes every item, then half-closes.

        Returns (rather than raises) an exception of the caller's iterable or
        of converting an item, after half-closing, so the reader can raise it
        once the items before it are answered. If the call itself ends first,
        stops quietly: the reader reports the call's status.
        """
        try:
            async for image in _aiter(self._images):
                request = stream_request(self.sent, await _to_image(image), self._selector)
                await self._slots.acquire()
                self.sent += 1
                await self._call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError):
            return None
        except Exception as error:
            error.add_note(f"while preparing classify_many item {self.sent}")
            with suppress(grpc.RpcError, asyncio.InvalidStateError):
                await self._call.done_writing()
            return error
        with suppress(grpc.RpcError, asyncio.InvalidStateError):
            await self._call.done_writing()
            self.complete = True
        return None


async def _aiter(images: Iterable[ImageInput] | AsyncIterable[ImageInput]) -> AsyncIterator[Any]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image
