"""The gRPC front door: converts digitserve.v1 messages to service calls and errors to statuses.

``status_for`` is the one place where errors become gRPC codes; the unary
handlers go through ``_rpc_errors`` and the stream's per-item errors through
``status_for`` too. Unexpected exceptions are logged with their traceback and
reported as INTERNAL with a generic message.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from .errors import InvalidInput, ServingError
from .logs import note_model
from .service import ClassifierService, ImageInput, Selector
from .versions import ModelVersion, State

log = logging.getLogger(__name__)

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["DigitClassifier"]
SERVICE_NAME = SERVICE_DESCRIPTOR.full_name
MAX_STREAM_ID_BYTES = 128
GENERIC_INTERNAL = "internal server error; the server log has the details"

_STATE = {
    State.LOADING: pb.VERSION_STATE_LOADING,
    State.AVAILABLE: pb.VERSION_STATE_AVAILABLE,
    State.UNLOADING: pb.VERSION_STATE_UNLOADING,
    State.FAILED: pb.VERSION_STATE_FAILED,
}


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and caller-safe message for an exception."""
    if isinstance(exc, ServingError):
        if exc.code == "INTERNAL":
            log.error("request failed: %s", exc.message)
        return grpc.StatusCode[exc.code], exc.message
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "request cancelled"
    log.error("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, GENERIC_INTERNAL


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _rpc_errors(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turn exceptions raised by a unary handler into a gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = status_for(exc)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc

    return wrapper


def _selector(msg: pb.ModelSelector) -> Selector:
    choice = msg.WhichOneof("version_choice")
    if choice == "version":
        if msg.version < 1:
            raise InvalidInput(f"model version must be a positive integer, got {msg.version}")
        return Selector(msg.name, version=msg.version)
    if choice == "label":
        if not msg.label:
            raise InvalidInput("model label must not be empty")
        return Selector(msg.name, label=msg.label)
    return Selector(msg.name)


def _image(msg: pb.Image) -> ImageInput:
    kind = msg.WhichOneof("data")
    if kind == "pixels":
        return ImageInput(msg.pixels)
    if kind == "encoded":
        return ImageInput(msg.encoded, encoded=True)
    raise InvalidInput("image has neither 'pixels' (784 raw bytes) nor 'encoded' (PNG/JPEG)")


def _deadline(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def _fill(out: pb.Prediction, probs: np.ndarray) -> None:
    row = probs.tolist()  # ten floats: plain Python beats numpy's per-call overhead
    top = max(row)
    out.digit = row.index(top)
    out.confidence = top
    out.probabilities.extend(row)


class DigitClassifierServicer(pb_grpc.DigitClassifierServicer):
    def __init__(self, service: ClassifierService, *, max_stream_in_flight: int) -> None:
        self._service = service
        self._max_in_flight = max_stream_in_flight

    @_rpc_errors
    async def Classify(
        self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClassifyResponse:
        service = self._service
        selector = _selector(request.model)
        note_model(selector.model or service.default_model)
        service.check_count(len(request.images))
        images = await service.prepare([_image(m) for m in request.images])
        version = service.acquire(selector)
        try:
            probs = await service.enqueue(version, images, _deadline(context))
        finally:
            service.release(version)
        service.observe(version, probs)
        response = pb.ClassifyResponse(
            model=pb.ModelVersionRef(name=version.model, version=version.version)
        )
        for row in probs:
            _fill(response.predictions.add(), row)
        return response

    async def ClassifyStream(  # type: ignore[override]  # writes with context.write
        self,
        request_iterator: AsyncIterator[pb.ClassifyStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # A coroutine writing with context.write (not an async generator): each
        # answer then passes through one layer, not one per wrapper.
        stream = _Stream(self._service, self._max_in_flight, _deadline(context))
        reader = asyncio.create_task(stream.read(request_iterator))
        try:
            async for response in stream.responses():
                await context.write(response)
            await reader  # re-raise a reader failure, if any
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            stream.cancel_pending()

    @_rpc_errors
    async def GetModelStatus(
        self, request: pb.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelStatusResponse:
        response = pb.GetModelStatusResponse()
        for info in self._service.manager.snapshot(request.name or None):
            model = response.models.add(name=info.name, default_version=info.default_version)
            model.labels.update(info.labels)
            by_version: dict[int, list[str]] = {}
            for label, number in info.labels.items():
                by_version.setdefault(number, []).append(label)
            for v in info.versions:
                status = model.versions.add(
                    version=v.version,
                    state=_STATE[v.state],
                    reason=v.reason,
                    labels=sorted(by_version.get(v.version, [])),
                )
                if v.manifest is not None:
                    _metadata(status.metadata, v)
        return response


def _metadata(out: pb.VersionMetadata, v: ModelVersion) -> None:
    meta = v.metadata
    with contextlib.suppress(TypeError, ValueError):
        out.test_accuracy = float(meta.get("test_accuracy", 0.0))
        out.test_loss = float(meta.get("test_loss", 0.0))
    out.architecture = str(meta.get("architecture", ""))
    trained_at = meta.get("trained_at")
    if isinstance(trained_at, str):
        with contextlib.suppress(ValueError):
            ts = timestamp_pb2.Timestamp()
            ts.FromDatetime(datetime.fromisoformat(trained_at))
            out.trained_at.CopyFrom(ts)
    for key, value in dict(meta.get("training_parameters") or {}).items():
        out.training_parameters[str(key)] = str(value)
    for key, value in dict(meta.get("data_checksums") or {}).items():
        out.data_checksums[str(key)] = str(value)


class _Stream:
    """One ClassifyStream call: items are queued as they arrive, answered as they finish."""

    def __init__(self, service: ClassifierService, max_in_flight: int, deadline: float | None):
        self._service = service
        self._deadline = deadline
        self._slots = asyncio.Semaphore(max_in_flight)
        self._out: asyncio.Queue[pb.ClassifyStreamResponse | None] = asyncio.Queue()
        self._pending: set[asyncio.Future[Any]] = set()
        self._reading = True

    async def read(self, requests: AsyncIterator[pb.ClassifyStreamRequest]) -> None:
        try:
            async for request in requests:
                await self._slots.acquire()
                self._start(request)
        finally:
            self._reading = False
            self._maybe_finish()

    def _start(self, request: pb.ClassifyStreamRequest) -> None:
        item_id = request.id
        try:
            if len(item_id.encode()) > MAX_STREAM_ID_BYTES:
                raise InvalidInput(f"item id is longer than {MAX_STREAM_ID_BYTES} bytes")
            image = _image(request.image)
            selector = _selector(request.model)
            if image.encoded:
                task = asyncio.ensure_future(self._encoded_item(item_id, image, selector))
                self._track(task)
                return
            pixels = self._service.prepare_one(image)[np.newaxis]
            self._enqueue(item_id, pixels, selector)
        except Exception as exc:
            self._error(item_id, exc)

    async def _encoded_item(self, item_id: str, image: ImageInput, selector: Selector) -> None:
        try:
            pixels = (await self._service.prepare_one_async(image))[np.newaxis]
            self._enqueue(item_id, pixels, selector)
        except Exception as exc:
            self._error(item_id, exc)

    def _enqueue(self, item_id: str, pixels: np.ndarray, selector: Selector) -> None:
        version = self._service.acquire(selector)
        try:
            future = self._service.enqueue(version, pixels, self._deadline)
        except BaseException:
            self._service.release(version)
            raise
        self._pending.add(future)
        future.add_done_callback(functools.partial(self._done, item_id, version))

    def _done(self, item_id: str, version: ModelVersion, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        self._service.release(version)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._error(item_id, exc)
            return
        probs = future.result()
        self._service.observe(version, probs)
        self._service.observe_item(version, "OK")
        response = pb.ClassifyStreamResponse(
            id=item_id, model=pb.ModelVersionRef(name=version.model, version=version.version)
        )
        _fill(response.prediction, probs[0])
        self._emit(response)

    def _error(self, item_id: str, exc: BaseException) -> None:
        code, message = status_for(exc)
        self._service.observe_item(None, code.name)
        response = pb.ClassifyStreamResponse(id=item_id)
        response.error.code = code.value[0]
        response.error.message = message
        self._emit(response)

    def _emit(self, response: pb.ClassifyStreamResponse) -> None:
        self._out.put_nowait(response)

    def _track(self, task: asyncio.Future[Any]) -> None:
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _maybe_finish(self) -> None:
        if not self._reading and not self._pending:
            self._out.put_nowait(None)

    async def responses(self) -> AsyncIterator[pb.ClassifyStreamResponse]:
        while True:
            response = await self._out.get()
            if response is None:
                return
            yield response
            self._slots.release()
            if not self._reading and not self._pending and self._out.empty():
                return

    def cancel_pending(self) -> None:
        for future in list(self._pending):
            future.cancel()
