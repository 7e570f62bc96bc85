"""ResultOrder puts out-of-order stream answers back in input order."""

from __future__ import annotations

import pytest

from digitserve.client import ItemResult
from digitserve.client.errors import ProtocolError
from digitserve.client.streaming import ResultOrder


def item(index: int) -> ItemResult:
    return ItemResult(index, None, None)


def indices(results: list[ItemResult]) -> list[int]:
    return [r.index for r in results]


def test_in_order_answers_are_released_at_once() -> None:
    order = ResultOrder()
    assert indices(order.add(item(0), sent=3)) == [0]
    assert indices(order.add(item(1), sent=3)) == [1]
    assert order.released == 2


def test_early_answers_wait_for_every_earlier_one() -> None:
    order = ResultOrder()
    assert order.add(item(2), sent=4) == []
    assert order.add(item(1), sent=4) == []
    assert order.held == 2
    assert indices(order.add(item(0), sent=4)) == [0, 1, 2]
    assert indices(order.add(item(3), sent=4)) == [3]
    assert order.held == 0
    order.finish(sent=4)


def test_an_answer_to_an_item_not_sent_is_a_protocol_error() -> None:
    order = ResultOrder()
    with pytest.raises(ProtocolError, match="not sent"):
        order.add(item(5), sent=5)
    with pytest.raises(ProtocolError, match="not sent"):
        order.add(item(-1), sent=5)


@pytest.mark.parametrize("first", [0, 2])
def test_a_second_answer_to_one_item_is_a_protocol_error(first: int) -> None:
    order = ResultOrder()
    order.add(item(first), sent=3)
    with pytest.raises(ProtocolError, match="twice"):
        order.add(item(first), sent=3)


def test_a_stream_that_ends_with_unanswered_items_is_a_protocol_error() -> None:
    order = ResultOrder()
    order.add(item(0), sent=3)
    order.add(item(2), sent=3)
    with pytest.raises(ProtocolError, match="1 of 3 items unanswered"):
        order.finish(sent=3)
