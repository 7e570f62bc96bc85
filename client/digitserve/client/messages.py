"""Building the request messages of the ``DigitClassifier`` service."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TypeVar

from digitserve.v1 import digitserve_pb2

__all__ = [
    "chunked",
    "classify_request",
    "model_selector",
    "stream_request",
]

T = TypeVar("T")


def model_selector(
    model: str | None = None, version: int | None = None, label: str | None = None
) -> digitserve_pb2.ModelSelector | None:
    """The selector for a model name and a version number or label; None for all defaults.

    No model means the server's default model; neither version nor label means
    the version labelled "stable", else the newest available one.
    """
    if version is not None and label is not None:
        raise ValueError("give a model version or a version label, not both")
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise ValueError(f"a model version is a positive integer, got {version!r}")
    if label is not None and not label:
        raise ValueError("a version label must not be empty")
    if model is None and version is None and label is None:
        return None
    selector = digitserve_pb2.ModelSelector(name=model or "")
    if version is not None:
        selector.version = version
    if label is not None:
        selector.label = label
    return selector


def classify_request(
    images: Sequence[digitserve_pb2.Image], selector: digitserve_pb2.ModelSelector | None
) -> digitserve_pb2.ClassifyRequest:
    """A ``Classify`` request for some images."""
    return digitserve_pb2.ClassifyRequest(images=images, model=selector)


def stream_request(
    index: int, image: digitserve_pb2.Image, selector: digitserve_pb2.ModelSelector | None
) -> digitserve_pb2.ClassifyStreamRequest:
    """The ``ClassifyStream`` request for the input at ``index``; its id is the index."""
    return digitserve_pb2.ClassifyStreamRequest(id=str(index), image=image, model=selector)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of at most ``size`` consecutive items (none for no items)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
