"""Predictions and stream item results built from hand-made response messages."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from digitserve.client import InvalidArgument, ItemError, ItemResult, NotFound, Prediction
from digitserve.client.errors import ProtocolError
from digitserve.client.results import item_result_from_proto, predictions_from_response
from digitserve.v1 import digitserve_pb2

PROBABILITIES = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.62, 0.05, 0.05]


def prediction_message(digit: int = 7) -> digitserve_pb2.Prediction:
    return digitserve_pb2.Prediction(
        digit=digit, confidence=PROBABILITIES[digit], probabilities=PROBABILITIES
    )


MODEL = digitserve_pb2.ModelVersionRef(name="mnist", version=3)


def test_classify_response_becomes_predictions_with_the_model_version() -> None:
    response = digitserve_pb2.ClassifyResponse(
        predictions=[prediction_message(7), prediction_message(2)], model=MODEL
    )
    predictions = predictions_from_response(response, expected=2)
    assert [p.digit for p in predictions] == [7, 2]
    first = predictions[0]
    assert first.confidence == pytest.approx(0.62)
    assert first.probabilities == pytest.approx(tuple(PROBABILITIES))
    assert isinstance(first.probabilities, tuple)
    assert (first.model_name, first.model_version) == ("mnist", 3)


def test_prediction_is_frozen_and_comparable() -> None:
    response = digitserve_pb2.ClassifyResponse(predictions=[prediction_message()], model=MODEL)
    prediction = predictions_from_response(response, expected=1)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        prediction.digit = 1  # type: ignore[misc]
    assert prediction == predictions_from_response(response, expected=1)[0]
    assert isinstance(hash(prediction), int)


def test_response_with_fewer_predictions_than_images_is_a_protocol_error() -> None:
    response = digitserve_pb2.ClassifyResponse(predictions=[prediction_message()], model=MODEL)
    with pytest.raises(ProtocolError, match="1 predictions for 2 images") as info:
        predictions_from_response(response, expected=2)
    assert info.value.code == grpc.StatusCode.INTERNAL


def test_prediction_without_ten_probabilities_is_a_protocol_error() -> None:
    bad = digitserve_pb2.Prediction(digit=1, confidence=1.0, probabilities=[0.0, 1.0])
    response = digitserve_pb2.ClassifyResponse(predictions=[bad], model=MODEL)
    with pytest.raises(ProtocolError, match="2 probabilities"):
        predictions_from_response(response, expected=1)


def test_stream_prediction_becomes_a_successful_item_result() -> None:
    response = digitserve_pb2.ClassifyStreamResponse(
        id="12", prediction=prediction_message(4), model=MODEL
    )
    result = item_result_from_proto(response)
    assert result.index == 12
    assert result.ok
    assert result.error is None
    assert result.unwrap() == Prediction(
        digit=4,
        confidence=pytest.approx(0.05),  # type: ignore[arg-type]
        probabilities=pytest.approx(tuple(PROBABILITIES)),  # type: ignore[arg-type]
        model_name="mnist",
        model_version=3,
    )


def test_stream_error_becomes_a_failed_item_result_with_its_status_code() -> None:
    response = digitserve_pb2.ClassifyStreamResponse(
        id="5", error=digitserve_pb2.ItemError(code=3, message="pixels must be 784 bytes")
    )
    result = item_result_from_proto(response)
    assert not result.ok
    assert result.prediction is None
    assert result.error == ItemError(grpc.StatusCode.INVALID_ARGUMENT, "pixels must be 784 bytes")


def test_unwrapping_a_failed_item_raises_its_typed_error_with_index_and_request_id() -> None:
    result = ItemResult(9, None, ItemError(grpc.StatusCode.NOT_FOUND, "no model 'x'"))
    with pytest.raises(NotFound) as info:
        result.unwrap(request_id="abc")
    error = info.value
    assert (error.code, error.details, error.index, error.request_id) == (
        grpc.StatusCode.NOT_FOUND,
        "no model 'x'",
        9,
        "abc",
    )
    assert str(error) == "NOT_FOUND: item 9: no model 'x'"


def test_unknown_item_error_code_number_becomes_unknown() -> None:
    response = digitserve_pb2.ClassifyStreamResponse(
        id="0", error=digitserve_pb2.ItemError(code=99, message="?")
    )
    result = item_result_from_proto(response)
    assert result.error is not None
    assert result.error.code == grpc.StatusCode.UNKNOWN


def test_item_error_code_maps_to_the_same_classes_as_call_errors() -> None:
    response = digitserve_pb2.ClassifyStreamResponse(
        id="1", error=digitserve_pb2.ItemError(code=3, message="bad")
    )
    with pytest.raises(InvalidArgument):
        item_result_from_proto(response).unwrap()


@pytest.mark.parametrize("item_id", ["", "seven", "1.5"])
def test_stream_answer_with_an_id_that_is_not_an_index_is_a_protocol_error(item_id: str) -> None:
    response = digitserve_pb2.ClassifyStreamResponse(
        id=item_id, prediction=prediction_message(), model=MODEL
    )
    with pytest.raises(ProtocolError, match="unknown stream item id"):
        item_result_from_proto(response)


def test_stream_answer_with_neither_prediction_nor_error_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="neither"):
        item_result_from_proto(digitserve_pb2.ClassifyStreamResponse(id="3"))
