"""What classification calls return: ``Prediction`` and, for streams, ``ItemResult``."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from digitserve.client.errors import (
    DigitServeError,
    ProtocolError,
    error_for_code,
    status_code_from_number,
)
from digitserve.v1 import digitserve_pb2

__all__ = [
    "ItemError",
    "ItemResult",
    "Prediction",
    "item_result_from_proto",
    "prediction_from_proto",
    "predictions_from_response",
]

NUM_CLASSES = 10


@dataclass(frozen=True, slots=True)
class Prediction:
    """The classification of one image."""

    digit: int
    """The most probable digit, 0 to 9."""
    confidence: float
    """The probability of ``digit``, in [0, 1]."""
    probabilities: tuple[float, ...]
    """The probability of each digit 0..9, in that order (10 values)."""
    model_name: str
    """The model that answered."""
    model_version: int
    """The version of that model that answered."""


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why one item of a stream failed."""

    code: grpc.StatusCode
    """The gRPC status code of the failure."""
    message: str
    """What was wrong and, where it applies, what is allowed."""


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The outcome of one ``classify_many`` item: exactly one of prediction and error is set."""

    index: int
    """Position of the item in the input."""
    prediction: Prediction | None
    """The classification, when the item succeeded."""
    error: ItemError | None
    """Why the item failed, when it failed."""

    @property
    def ok(self) -> bool:
        """Whether the item succeeded."""
        return self.error is None

    def unwrap(self, *, request_id: str | None = None) -> Prediction:
        """The prediction, or the item's error raised as a ``DigitServeError`` subclass."""
        if self.prediction is not None:
            return self.prediction
        raise self.to_exception(request_id=request_id)

    def to_exception(self, *, request_id: str | None = None) -> DigitServeError:
        """The item's error as the matching ``DigitServeError`` subclass."""
        error = self.error or ItemError(grpc.StatusCode.UNKNOWN, "no prediction and no error")
        return error_for_code(error.code, error.message, request_id=request_id, index=self.index)


def prediction_from_proto(
    prediction: digitserve_pb2.Prediction, model: digitserve_pb2.ModelVersionRef
) -> Prediction:
    """A ``Prediction`` from its message and the model version that computed it."""
    probabilities = tuple(float(p) for p in prediction.probabilities)
    if len(probabilities) != NUM_CLASSES:
        raise ProtocolError(
            f"the server sent {len(probabilities)} probabilities instead of {NUM_CLASSES}"
        )
    return Prediction(
        digit=int(prediction.digit),
        confidence=float(prediction.confidence),
        probabilities=probabilities,
        model_name=model.name,
        model_version=int(model.version),
    )


def predictions_from_response(
    response: digitserve_pb2.ClassifyResponse, *, expected: int
) -> list[Prediction]:
    """The predictions of a ``Classify`` answer, checked to be one per request image."""
    if len(response.predictions) != expected:
        raise ProtocolError(
            f"the server sent {len(response.predictions)} predictions for {expected} images"
        )
    return [prediction_from_proto(p, response.model) for p in response.predictions]


def item_result_from_proto(response: digitserve_pb2.ClassifyStreamResponse) -> ItemResult:
    """The ``ItemResult`` of one ``ClassifyStream`` answer; its id must be an input index."""
    try:
        index = int(response.id)
    except ValueError:
        raise ProtocolError(
            f"the server answered an unknown stream item id {response.id!r}"
        ) from None
    result = response.WhichOneof("result")
    if result == "prediction":
        return ItemResult(index, prediction_from_proto(response.prediction, response.model), None)
    if result == "error":
        code = status_code_from_number(response.error.code)
        return ItemResult(index, None, ItemError(code, response.error.message))
    raise ProtocolError(f"stream item {index} was answered with neither prediction nor error")
