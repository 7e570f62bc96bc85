"""``DigitClient``: the blocking SDK, on a ``grpc.Channel``."""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import replace
from types import TracebackType
from typing import Literal, Self, TypeVar, overload

import grpc
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
from digitserve.client.channel import ChannelSettings, create_channel
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
from digitserve.v1 import digitserve_pb2, digitserve_pb2_grpc

__all__ = ["DEFAULT_WINDOW", "DigitClient"]

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

#: Default number of ``classify_many`` items sent but not yet answered.
DEFAULT_WINDOW = 128


class DigitClient:
    """A blocking client of a digitserve server (or of several replicas).

    ``target`` is ``host:port``, any gRPC target such as
    ``dns:///digitserve:8500``, or a list of ``ip:port`` replica addresses;
    calls are spread over every address (round robin) and calls that fail
    with UNAVAILABLE are retried (see ``ChannelSettings``).

    Every call has a deadline: ``timeout`` seconds for unary calls and
    ``stream_timeout`` for a whole ``classify_many`` stream, unless the call
    gives its own ``timeout``. Every call sends an ``x-request-id`` metadata
    entry: the call's ``request_id``, or a random one. Failed calls raise a
    ``DigitServeError`` subclass.

    The client is safe to share between threads. Close it (or use it as a
    context manager) to close its channel.
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
        settings = channel_settings or ChannelSettings()
        self._channel = create_channel(target, settings, credentials=credentials)
        self._closed = False
        self._stub = digitserve_pb2_grpc.DigitClassifierStub(self._channel)
        # status() and health() must reach a replica that is not SERVING too (to say
        # so): they use a second channel without client-side health checking.
        self._inspect_args = (target, replace(settings, health_check=False), credentials)
        self._inspect_channel: grpc.Channel | None = None
        self._inspect_lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls still running are cancelled."""
        self._closed = True
        self._channel.close()
        if self._inspect_channel is not None:
            self._inspect_channel.close()

    def _inspector(self) -> grpc.Channel:
        with self._inspect_lock:
            if self._inspect_channel is None:
                target, settings, credentials = self._inspect_args
                self._inspect_channel = create_channel(target, settings, credentials=credentials)
            return self._inspect_channel

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    def classify(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Prediction:
        """Classifies one image (see ``to_image`` for what ``image`` may be).

        ``model`` names the model (default: the server's default model);
        ``version`` or ``label`` picks its version (default: "stable", else the
        newest available one).
        """
        request = classify_request([to_image(image)], model_selector(model, version, label))
        response = self._classify(request, timeout, check_request_id(request_id))
        return predictions_from_response(response, expected=1)[0]

    def classify_batch(
        self,
        images: Iterable[ImageInput],
        *,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> list[Prediction]:
        """Classifies many images with unary calls of up to ``max_images_per_request`` each.

        Predictions come in input order. Each call has its own deadline and
        all calls send the same request id. Images of one call are answered by
        one model version; different calls may be answered by different
        versions (during a rollout): each ``Prediction`` says which.
        """
        selector = model_selector(model, version, label)
        request_id = check_request_id(request_id)
        predictions: list[Prediction] = []
        for chunk in chunked(images, self._defaults.max_images_per_request):
            request = classify_request([to_image(image) for image in chunk], selector)
            response = self._classify(request, timeout, request_id)
            predictions.extend(predictions_from_response(response, expected=len(chunk)))
        return predictions

    @overload
    def classify_many(
        self,
        images: Iterable[ImageInput],
        *,
        window: int = ...,
        model: str | None = ...,
        version: int | None = ...,
        label: str | None = ...,
        timeout: float | None = ...,
        request_id: str | None = ...,
        raise_on_error: Literal[True] = ...,
    ) -> Iterator[Prediction]: ...

    @overload
    def classify_many(
        self,
        images: Iterable[ImageInput],
        *,
        window: int = ...,
        model: str | None = ...,
        version: int | None = ...,
        label: str | None = ...,
        timeout: float | None = ...,
        request_id: str | None = ...,
        raise_on_error: Literal[False],
    ) -> Iterator[ItemResult]: ...

    def classify_many(
        self,
        images: Iterable[ImageInput],
        *,
        window: int = DEFAULT_WINDOW,
        model: str | None = None,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
        request_id: str | None = None,
        raise_on_error: bool = True,
    ) -> Iterator[Prediction] | Iterator[ItemResult]:
        """Classifies a stream of images over one ``ClassifyStream`` call, in input order.

        ``images`` is consumed lazily (from a gRPC thread); at most ``window``
        items are sent but not yet answered. Results are yielded in input
        order even though the server may answer out of order.

        With ``raise_on_error=True`` (the default) this yields ``Prediction``
        objects and raises the item's ``DigitServeError`` subclass (its
        ``index`` set) at the first failed item, ending the stream. With
        ``raise_on_error=False`` it yields one ``ItemResult`` per item, holding
        a prediction or an ``ItemError``, and goes on past failed items.

        Either way a failure of the call itself (deadline, server gone) raises
        a ``DigitServeError``, and an input that cannot be converted raises its
        ``TypeError`` / ``ValueError`` / ``OSError`` after the results of the
        items before it. The deadline covers the whole stream
        (``stream_timeout`` unless ``timeout`` is given). Closing the iterator
        early cancels the call.
        """
        self._check_open()
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

    def status(
        self,
        model: str | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> list[ModelStatus]:
        """The status of one model, or of every model the server knows (in name order)."""
        request = digitserve_pb2.GetModelStatusRequest(name=model or "")
        stub = digitserve_pb2_grpc.DigitClassifierStub(self._inspector())
        response = self._unary(stub.GetModelStatus, request, timeout, request_id)
        return models_from_response(response)

    def health(
        self,
        service: str = "",
        *,
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> str:
        """The serving status of ``service`` ("" for the whole server) by ``grpc.health.v1``.

        Returns the status name: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or
        "UNKNOWN". A service the server does not know raises ``NotFound``.
        """
        request = health_pb2.HealthCheckRequest(service=service)
        health = health_pb2_grpc.HealthStub(self._inspector())
        response = self._unary(health.Check, request, timeout, request_id)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def _classify(
        self, request: digitserve_pb2.ClassifyRequest, timeout: float | None, request_id: str
    ) -> digitserve_pb2.ClassifyResponse:
        return self._unary(self._stub.Classify, request, timeout, request_id)

    def _unary(
        self,
        method: grpc.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        timeout: float | None,
        request_id: str | None,
    ) -> ResponseT:
        """Calls ``method`` with the call's deadline and request id; maps its failure."""
        self._check_open()
        request_id = check_request_id(request_id)
        try:
            return method(
                request,
                timeout=check_timeout(self._defaults.timeout if timeout is None else timeout),
                metadata=call_metadata(request_id),
                wait_for_ready=self._defaults.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise error_from_rpc(error, request_id=echoed_request_id(error, request_id)) from None

    def _stream(
        self,
        images: Iterable[ImageInput],
        selector: digitserve_pb2.ModelSelector | None,
        window: int,
        timeout: float,
        request_id: str,
    ) -> Generator[ItemResult, None, None]:
        feed = _RequestFeed(images, selector, window)
        order = ResultOrder()
        calls = self._stub.ClassifyStream(
            iter(feed),
            timeout=timeout,
            metadata=call_metadata(request_id),
            wait_for_ready=self._defaults.wait_for_ready,
        )
        try:
            try:
                for response in calls:
                    feed.answered()
                    yield from order.add(item_result_from_proto(response), sent=feed.sent)
            except grpc.RpcError as error:
                raise error_from_rpc(
                    error, request_id=echoed_request_id(error, request_id)
                ) from None
            order.finish(sent=feed.sent)
            feed.raise_input_error()
            if not feed.complete:
                raise ProtocolError("the server ended the stream before every item was sent")
        finally:
            feed.stop()
            calls.cancel()


def _predictions_or_raise(
    results: Generator[ItemResult, None, None], request_id: str
) -> Iterator[Prediction]:
    """The predictions of ``results``; the first failed item is raised (ending the stream)."""
    with closing(results):
        for result in results:
            yield result.unwrap(request_id=request_id)


class _RequestFeed:
    """The request iterator of one ``ClassifyStream`` call, with its in-flight window.

    gRPC pulls requests from its own thread; each request takes a slot, each
    answer gives one back, so at most ``window`` items are unanswered. An
    exception from the caller's iterable or from converting an item ends the
    requests (the call half-closes normally) and is kept for the caller's
    thread, which raises it once the items before it are answered.
    """

    def __init__(
        self,
        images: Iterable[ImageInput],
        selector: digitserve_pb2.ModelSelector | None,
        window: int,
    ) -> None:
        self._images = images
        self._selector = selector
        self._slots = threading.Semaphore(window)
        self._stopped = threading.Event()
        self._input_error: Exception | None = None
        self.sent = 0
        """How many items have been handed to gRPC (their indices are 0..sent-1)."""
        self.complete = False
        """Whether every item has been handed to gRPC."""

    def __iter__(self) -> Iterator[digitserve_pb2.ClassifyStreamRequest]:
        try:
            for index, image in enumerate(self._images):
                request = stream_request(index, to_image(image), self._selector)
                self._slots.acquire()
                if self._stopped.is_set():
                    return
                self.sent = index + 1
                yield request
            self.complete = True
        except Exception as error:  # raised again in the caller's thread
            error.add_note(f"while preparing classify_many item {self.sent}")
            self._input_error = error

    def answered(self) -> None:
        """Frees the slot of one answered item."""
        self._slots.release()

    def stop(self) -> None:
        """Makes the iterator end instead of sending more items."""
        self._stopped.set()
        self._slots.release()

    def raise_input_error(self) -> None:
        """Raises the exception that ended the requests, if one did."""
        if self._input_error is not None:
            raise self._input_error
