"""The lock-free metric types render the same exposition prometheus-client would."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from digitserve.server.metric_types import FastCounter, FastGauge, FastHistogram


def exposition(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line and not line.startswith("#")
    ]


def test_counter_gauge_and_histogram_exposition() -> None:
    reg = CollectorRegistry()
    counter = FastCounter("t_requests", "Requests.", ["code"], registry=reg)
    gauge = FastGauge("t_depth", "Depth.", [], registry=reg)
    hist = FastHistogram("t_seconds", "Seconds.", ["rpc"], registry=reg, buckets=(0.1, 1.0))
    counter.labels("OK").inc()
    counter.labels("OK").inc(2)
    counter.labels("NOT_FOUND")  # exists at 0
    gauge.labels().set(7)
    gauge.labels().dec(2)
    child = hist.labels("Classify")
    for value in (0.05, 0.1, 0.5, 3.0):
        child.observe(value)
    child.observe_many(np.array([0.01, 2.0]))
    assert exposition(reg) == [
        't_requests_total{code="OK"} 3.0',
        't_requests_total{code="NOT_FOUND"} 0.0',
        "t_depth 5.0",
        't_seconds_bucket{le="0.1",rpc="Classify"} 3.0',
        't_seconds_bucket{le="1.0",rpc="Classify"} 4.0',
        't_seconds_bucket{le="+Inf",rpc="Classify"} 6.0',
        't_seconds_count{rpc="Classify"} 6.0',
        't_seconds_sum{rpc="Classify"} 5.66',
    ]
    counter.remove("OK")
    assert 't_requests_total{code="OK"} 3.0' not in exposition(reg)


def test_labels_are_checked() -> None:
    counter = FastCounter("t_x", "X.", ["a", "b"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="increasing"):
        FastHistogram("t_h", "H.", [], registry=CollectorRegistry(), buckets=(1.0, 0.5))
