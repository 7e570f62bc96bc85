"""Request messages: model selectors and chunking."""

from __future__ import annotations

import pytest

from digitserve.client.messages import chunked, classify_request, model_selector, stream_request
from digitserve.v1 import digitserve_pb2


def test_no_selection_leaves_the_selector_unset() -> None:
    assert model_selector() is None
    request = classify_request([digitserve_pb2.Image(pixels=bytes(784))], None)
    assert not request.HasField("model")


def test_selector_by_name_version_and_label() -> None:
    assert model_selector("mnist") == digitserve_pb2.ModelSelector(name="mnist")
    by_version = model_selector("mnist", version=3)
    assert by_version is not None
    assert by_version.WhichOneof("version_choice") == "version"
    assert by_version.version == 3
    by_label = model_selector(label="canary")
    assert by_label is not None
    assert (by_label.name, by_label.label) == ("", "canary")


def test_version_and_label_together_are_rejected() -> None:
    with pytest.raises(ValueError, match="not both"):
        model_selector("mnist", version=1, label="stable")


@pytest.mark.parametrize("version", [0, -2, True])
def test_version_must_be_a_positive_integer(version: int) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        model_selector(version=version)


def test_stream_request_id_is_the_input_index() -> None:
    selector = model_selector("mnist")
    request = stream_request(41, digitserve_pb2.Image(pixels=bytes(784)), selector)
    assert request.id == "41"
    assert request.model.name == "mnist"


def test_chunked_splits_lazily_into_lists_of_at_most_size() -> None:
    assert list(chunked(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunked([], 3)) == []
    with pytest.raises(ValueError, match=">= 1"):
        list(chunked([1], 0))
