"""Overflow and deadlines through a real server: rejected at once, never computed."""

from __future__ import annotations

import threading
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from digitserve.v1 import digitserve_pb2 as pb
from digitserve.v1 import digitserve_pb2_grpc as pb_grpc

from ..conftest import ServerThread, server_settings

IMAGES_PER_REQUEST = 256


def metric(server: ServerThread, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture
def busy_server(trained_repo: Path, start_server) -> ServerThread:  # type: ignore[no-untyped-def]
    return start_server(
        server_settings(
            trained_repo,
            max_images_per_request=IMAGES_PER_REQUEST,
            max_queued_items=2 * IMAGES_PER_REQUEST,
            max_batch_size=32,
            batch_threads=1,
        )
    )


def request(mnist_test: tuple[np.ndarray, np.ndarray], count: int) -> pb.ClassifyRequest:
    images = mnist_test[0][:count]
    return pb.ClassifyRequest(images=[pb.Image(pixels=img.tobytes()) for img in images])


def test_a_full_queue_is_rejected_with_resource_exhausted(busy_server, mnist_test) -> None:
    big = request(mnist_test, IMAGES_PER_REQUEST)
    outcomes: Counter[str] = Counter()
    messages: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(12)

    def send(stub: pb_grpc.DigitClassifierStub) -> None:
        start.wait()
        try:
            response = stub.Classify(big, timeout=60)
            assert len(response.predictions) == IMAGES_PER_REQUEST
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
            with lock:
                messages.append(exc.details())
        with lock:
            outcomes[code] += 1

    with grpc.insecure_channel(busy_server.target) as channel:
        stub = pb_grpc.DigitClassifierStub(channel)
        threads = [threading.Thread(target=send, args=(stub,)) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # 12 x 256 images against a queue of 512: some wait, the rest are refused at once
        assert outcomes["OK"] >= 2
        assert outcomes["RESOURCE_EXHAUSTED"] >= 1
        assert set(outcomes) == {"OK", "RESOURCE_EXHAUSTED"}
        assert all("max_queued_items=512" in m for m in messages)
        # the server stays healthy and serves the next request
        assert len(stub.Classify(request(mnist_test, 3), timeout=10).predictions) == 3
    refused = metric(busy_server, "digitserve_rejections_total", reason="queue_full")
    assert refused == outcomes["RESOURCE_EXHAUSTED"] * IMAGES_PER_REQUEST


def test_expired_requests_are_never_computed(trained_repo, start_server, mnist_test) -> None:
    # One image per model call: a backlog of 768 images keeps the runner busy long
    # enough for the short deadlines below to pass while their requests wait.
    server = start_server(
        server_settings(
            trained_repo,
            max_images_per_request=IMAGES_PER_REQUEST,
            max_queued_items=4 * IMAGES_PER_REQUEST,
            max_batch_size=1,
            batch_threads=1,
        )
    )
    big = request(mnist_test, IMAGES_PER_REQUEST)
    small = request(mnist_test, 8)
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.DigitClassifierStub(channel)
        stub.Classify(small, timeout=10)  # connected and warm
        # what reached the model, from the batcher's own figures (not the answers)
        before = metric(server, "digitserve_batch_size_images_sum")
        slow = [stub.Classify.future(big, timeout=60) for _ in range(3)]
        doomed = [stub.Classify.future(small, timeout=0.05) for _ in range(4)]
        for future in doomed:
            with pytest.raises(grpc.RpcError) as info:
                future.result()
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for future in slow:
            assert len(future.result().predictions) == IMAGES_PER_REQUEST
        assert len(stub.Classify(request(mnist_test, 1), timeout=10).predictions) == 1
    computed = metric(server, "digitserve_batch_size_images_sum") - before
    # only the three slow requests and the last one were computed
    assert computed == 3 * IMAGES_PER_REQUEST + 1
    withdrawn = metric(server, "digitserve_rejections_total", reason="deadline") + metric(
        server, "digitserve_rejections_total", reason="cancelled"
    )
    assert withdrawn == 4 * 8  # every image of the four expired requests
