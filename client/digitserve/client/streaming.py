"""Putting ``ClassifyStream`` answers back in input order.

The server may answer stream items out of order; each answer carries the id
the client gave its item, which the SDK sets to the item's input index.
``ResultOrder`` holds early answers until every earlier one has arrived, and
checks that each index is answered exactly once.
"""

from __future__ import annotations

from digitserve.client.errors import ProtocolError
from digitserve.client.results import ItemResult

__all__ = ["ResultOrder"]


class ResultOrder:
    """A reorder buffer releasing results by consecutive index from 0."""

    def __init__(self) -> None:
        self._early: dict[int, ItemResult] = {}
        self._next = 0

    @property
    def released(self) -> int:
        """How many results have been released (they are indices 0..released-1)."""
        return self._next

    @property
    def held(self) -> int:
        """How many results arrived early and wait for an earlier one."""
        return len(self._early)

    def add(self, result: ItemResult, *, sent: int) -> list[ItemResult]:
        """Takes the answer to one of the first ``sent`` items; returns those now in order."""
        index = result.index
        if not 0 <= index < sent:
            raise ProtocolError(f"the server answered stream item {index}, which was not sent")
        if index < self._next or index in self._early:
            raise ProtocolError(f"the server answered stream item {index} twice")
        self._early[index] = result
        ready = []
        while self._next in self._early:
            ready.append(self._early.pop(self._next))
            self._next += 1
        return ready

    def finish(self, *, sent: int) -> None:
        """Checks, once the stream has ended, that every sent item was answered."""
        missing = sent - self._next - len(self._early)
        if missing:
            raise ProtocolError(
                f"the stream ended with {missing} of {sent} items unanswered "
                f"(first: item {self._next})"
            )
