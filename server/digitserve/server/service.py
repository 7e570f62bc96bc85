"""The transport-free classification service: images and a model choice in, predictions out.

The gRPC servicer (``grpc_api``) only converts messages to these calls and
errors to statuses; a CLI, another protocol or a test can drive this directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import images as imaging
from .errors import InvalidInput
from .versions import ModelManager, ModelVersion


@dataclass(frozen=True, slots=True)
class ImageInput:
    """One image as it came in: raw 784 pixels, or encoded PNG/JPEG bytes."""

    data: bytes
    encoded: bool = False


@dataclass(frozen=True, slots=True)
class Selector:
    """Which model version answers; empty fields mean defaults."""

    model: str = ""
    version: int | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """Probabilities [k,10] for k images, and the version that computed them."""

    probabilities: np.ndarray
    model: str
    version: int


class ServiceObserver(Protocol):
    """Receives computed probabilities and stream item outcomes (for metrics)."""

    def predictions(self, model: str, version: int, probabilities: np.ndarray) -> None: ...

    def item_done(self, model: str, version: int) -> None: ...

    def item_failed(self, model: str, code: str) -> None: ...


@dataclass(frozen=True)
class Limits:
    max_images_per_request: int = 1024
    max_image_bytes: int = 4 * 1024 * 1024


class ClassifierService:
    """Validates and prepares images, picks a version, and queues work on its batcher."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        default_model: str,
        limits: Limits,
        preprocess_threads: int = 2,
        observer: ServiceObserver | None = None,
    ) -> None:
        self._manager = manager
        self._default_model = default_model
        self._limits = limits
        self._observer = observer
        self._decoder = ThreadPoolExecutor(
            max_workers=preprocess_threads, thread_name_prefix="decode"
        )

    @property
    def manager(self) -> ModelManager:
        return self._manager

    @property
    def default_model(self) -> str:
        return self._default_model

    def close(self) -> None:
        self._decoder.shutdown(wait=False, cancel_futures=True)

    # -- preparing images ---------------------------------------------------------

    def check_count(self, count: int) -> None:
        if count == 0:
            raise InvalidInput(
                f"request has no images; send 1 to {self._limits.max_images_per_request}"
            )
        if count > self._limits.max_images_per_request:
            raise InvalidInput(
                f"request has {count} images; at most "
                f"{self._limits.max_images_per_request} are allowed per request"
            )

    async def prepare(self, inputs: Sequence[ImageInput]) -> np.ndarray:
        """Validate and convert images to a uint8 [k,28,28] array."""
        self.check_count(len(inputs))
        if not any(i.encoded for i in inputs):
            return self._from_pixels(inputs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoder, self._prepare_mixed, inputs)

    def _from_pixels(self, inputs: Sequence[ImageInput]) -> np.ndarray:
        for index, item in enumerate(inputs):
            if len(item.data) != imaging.PIXELS:
                raise self._at(
                    index,
                    len(inputs),
                    InvalidInput(
                        f"raw pixels must be exactly {imaging.PIXELS} bytes (28x28 uint8, "
                        f"row-major), got {len(item.data)}"
                    ),
                )
        if len(inputs) == 1:
            return imaging.from_pixels(inputs[0].data)[np.newaxis]
        joined = b"".join(i.data for i in inputs)
        return np.frombuffer(joined, dtype=np.uint8).reshape(len(inputs), 28, 28)

    def _prepare_mixed(self, inputs: Sequence[ImageInput]) -> np.ndarray:
        out = np.empty((len(inputs), 28, 28), dtype=np.uint8)
        for index, item in enumerate(inputs):
            try:
                out[index] = self.prepare_one(item)
            except InvalidInput as exc:
                raise self._at(index, len(inputs), exc) from None
        return out

    def prepare_one(self, item: ImageInput) -> np.ndarray:
        """One image as 28x28 uint8 (blocking for encoded images)."""
        if item.encoded:
            return imaging.from_encoded(item.data, max_bytes=self._limits.max_image_bytes)
        return imaging.from_pixels(item.data)

    async def prepare_one_async(self, item: ImageInput) -> np.ndarray:
        if not item.encoded:
            return imaging.from_pixels(item.data)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoder, self.prepare_one, item)

    @staticmethod
    def _at(index: int, count: int, exc: InvalidInput) -> InvalidInput:
        return exc if count == 1 else InvalidInput(f"image {index}: {exc.message}")

    # -- classifying ------------------------------------------------------------

    def acquire(self, selector: Selector) -> ModelVersion:
        """Hold the version that will answer (release with ``release``)."""
        return self._manager.acquire(
            selector.model or self._default_model, selector.version, selector.label
        )

    def release(self, version: ModelVersion) -> None:
        self._manager.release(version)

    def enqueue(
        self, version: ModelVersion, images: np.ndarray, deadline: float | None
    ) -> asyncio.Future[np.ndarray]:
        """Queue prepared images on a held version's batcher."""
        assert version.batcher is not None, "an AVAILABLE version always has a batcher"
        return version.batcher.enqueue(images, deadline)

    def observe(self, version: ModelVersion, probabilities: np.ndarray) -> None:
        if self._observer is not None:
            self._observer.predictions(version.model, version.version, probabilities)

    def observe_item(self, version: ModelVersion | None, code: str, model: str = "") -> None:
        """Count one stream item's outcome."""
        if self._observer is None:
            return
        if version is not None and code == "OK":
            self._observer.item_done(version.model, version.version)
        else:
            self._observer.item_failed(model or self._default_model, code)

    async def classify(
        self,
        inputs: Sequence[ImageInput],
        selector: Selector = Selector(),
        *,
        deadline: float | None = None,
    ) -> Outcome:
        """Classify images with one version; ``deadline`` is a ``time.monotonic()`` instant."""
        images = await self.prepare(inputs)
        version = self.acquire(selector)
        try:
            probs = await self.enqueue(version, images, deadline)
        finally:
            self.release(version)
        self.observe(version, probs)
        return Outcome(probs, version.model, version.version)
